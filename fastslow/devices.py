"""Where models run: a CUDA GPU when the process has one (with bfloat16 autocast), the CPU otherwise."""

from __future__ import annotations

import contextlib

import torch

from fastslow.errors import FastslowError

AUTO = "auto"  # a GPU setting resolved against the cluster when a job or the app starts (cluster/resources.py)


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


def check_setting(name: str, value, allow_bool: bool = False) -> None:
    """Refuse anything but `auto`, a non-negative number (or a bool, where `allow_bool`)."""
    if value == AUTO or (allow_bool and isinstance(value, bool)):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise FastslowError(f"{name}: expected 'auto' or a number >= 0{' or true/false' if allow_bool else ''}, "
                            f"got {value!r}")
