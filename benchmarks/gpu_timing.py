"""Timing helpers of `python -m benchmarks.gpu` (benchmarks/gpu.py): device sync, mean call time, precisions."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path


def sig(x: float) -> float:
    """Four significant figures (a small positive figure stays positive)."""
    return float(f"{x:.4g}")


def sync(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, iters: int) -> float:
    """Mean seconds per call of `fn` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def precisions(device) -> list[str]:
    """The precisions timed: bfloat16 autocast and fp32 on CUDA, fp32 on CPU."""
    return ["bf16", "fp32"] if device.type == "cuda" else ["fp32"]


def autocast(device, precision: str):
    """The autocast context of a precision (none for fp32)."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device_name(device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "cpu"
