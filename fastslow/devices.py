"""Where models run: a CUDA GPU when the process has one (with bfloat16 autocast), the CPU otherwise."""

from __future__ import annotations

import contextlib

import torch


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device | str):
    """Mixed precision on a GPU (bfloat16: no loss scaling needed); a no-op on the CPU, where it would only slow
    things down. Callers cast what leaves the model back to float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
