"""A pretrained model's image preprocessing, read from its transformers image processor and redone in torch.

The result equals the processor's PIL backend (what `use_fast=False` / `backend="pil"` gives) within one grey level:
torch's antialiased bilinear and bicubic resizing is PIL's filter, computed in float where PIL rounds in fixed point,
so the result is rounded to uint8 as PIL's is before rescaling. No torchvision needed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from fastslow.errors import FastslowError

RESIZE_MODES = ("shortest_edge", "fixed", "patches", "none")
# PIL resampling codes -> torch interpolation modes that reproduce them ("nearest-exact" is PIL's pixel centres).
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
TORCH_MODE = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}


@dataclass
class PretrainedVisionConfig:
    """How a pretrained model's images are made: the size items are decoded to, then its processor's steps."""

    # Items are decoded to image_size x image_size (fastslow/data/decode.py, by decode_fit: the shorter side
    # resized and a centre crop when the processor crops, the whole image squashed when `crop` is empty); the
    # steps below then run as the model's processor runs them.
    image_size: int = 224
    trainable: bool = False  # set from the model's `trainable`
    resize: str = "shortest_edge"  # shortest_edge (aspect kept) | fixed (size = height, width) | patches | none
    size: list[int] = field(default_factory=lambda: [224])  # [shortest edge] or [height, width]
    crop: list[int] = field(default_factory=list)  # [height, width] of the centre crop; [] = none
    resample: str = "bicubic"  # nearest | bilinear | bicubic
    rescale: float = 1 / 255  # 0 = none
    mean: list[float] = field(default_factory=list)  # [] = no normalisation
    std: list[float] = field(default_factory=list)
    patch_size: int = 0  # patches (SigLIP 2): resized to at most max_num_patches patches, aspect kept
    max_num_patches: int = 0

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise FastslowError(f"vision.resize: unknown value {self.resize!r} (expected {', '.join(RESIZE_MODES)})")
        if self.resample not in TORCH_MODE:
            raise FastslowError(f"vision.resample: {self.resample!r} is not supported (nearest, bilinear, bicubic)")
        if self.image_size <= 0 or any(s <= 0 for s in self.size + self.crop):
            raise FastslowError("vision: image_size, size and crop must be positive")
        if self.resize == "patches" and (self.patch_size <= 0 or self.max_num_patches <= 0):
            raise FastslowError("vision: resize 'patches' needs a positive patch_size and max_num_patches")


def _hw(size) -> list[int]:
    return [int(size.height), int(size.width)] if size is not None and size.height and size.width else []


def vision_settings(proc) -> PretrainedVisionConfig:
    """The settings of a transformers image processor (its resolved attributes, defaults and legacy keys included)."""
    name = type(proc).__name__
    if getattr(proc, "do_pad", False):
        raise FastslowError(f"image processor {name}: do_pad is not supported")
    resample = RESAMPLE.get(int(getattr(proc, "resample", 2) or 0))
    if resample is None:
        raise FastslowError(f"image processor {name}: resample {proc.resample} is not supported "
                            "(nearest, bilinear or bicubic only)")
    patch, patches = int(getattr(proc, "patch_size", 0) or 0), int(getattr(proc, "max_num_patches", 0) or 0)
    size = getattr(proc, "size", None)
    if patches:  # SigLIP 2: the size follows from the patch budget
        mode, dims, side = "patches", [], patch * math.isqrt(patches)
    elif not getattr(proc, "do_resize", True):
        mode, dims, side = "none", [], 0
    elif size is not None and size.shortest_edge and not size.longest_edge:
        mode, dims = "shortest_edge", [int(size.shortest_edge)]
        side = dims[0]
    elif _hw(size):
        mode, dims = "fixed", _hw(size)
        side = max(dims)
    else:
        raise FastslowError(f"image processor {name}: size {size} is not supported (shortest_edge, or height and "
                            "width)")
    crop = _hw(getattr(proc, "crop_size", None)) if getattr(proc, "do_center_crop", False) else []
    side = side or (max(crop) if crop else 224)
    normalize = getattr(proc, "do_normalize", True)
    return PretrainedVisionConfig(
        image_size=side, resize=mode, size=dims, crop=crop, resample=resample,
        rescale=float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 0.0,
        mean=[float(m) for m in proc.image_mean] if normalize else [],
        std=[float(s) for s in proc.image_std] if normalize else [],
        patch_size=patch if patches else 0, max_num_patches=patches)


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shorter side `size`, as transformers computes it (the longer side truncated, not rounded)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def patches_size(height: int, width: int, patch: int, max_patches: int, eps: float = 1e-5) -> tuple[int, int]:
    """SigLIP 2's size for at most `max_patches` patches, aspect kept (its processor's binary search, verbatim)."""

    def scaled(scale: float, size: int) -> int:
        return int(max(patch, math.ceil(size * scale / patch) * patch))

    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        scale = (lo + hi) / 2
        if (scaled(scale, height) / patch) * (scaled(scale, width) / patch) <= max_patches:
            lo = scale
        else:
            hi = scale
    return scaled(lo, height), scaled(lo, width)


def resize(x: torch.Tensor, size: tuple[int, int], resample: str) -> torch.Tensor:
    """Float (B,3,H,W) in [0, 255] resized as PIL resizes uint8 images (then rounded to whole grey levels)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # PIL returns a copy
    mode = TORCH_MODE[resample]
    if mode == "nearest-exact":
        return F.interpolate(x, size=size, mode=mode)
    # PIL's filter (support widened by the scale when shrinking: antialias=True), one direction at a time, each
    # pass rounded and clipped to uint8: bicubic overshoots, and PIL clips between the passes.
    passes = [(x.shape[-2], size[1]), tuple(size)]  # width first
    if x.shape[-1] != size[1] and x.shape[-2] != size[0] and _pil_height_first(*x.shape[-2:], *size, resample):
        passes = [(size[0], x.shape[-1]), tuple(size)]
    dtype = x.dtype
    # In float64 PIL's fixed-point results come out to the grey level in all but a few pixels (MPS has no float64).
    x = x.to(torch.float32 if x.device.type == "mps" else torch.float64)
    for step in passes:
        if tuple(x.shape[-2:]) != step:
            x = F.interpolate(x, size=step, mode=mode, align_corners=False, antialias=True)
            x = (x + 0.5).floor().clamp(0, 255)  # PIL rounds halves up
    return x.to(dtype)


@functools.lru_cache(maxsize=256)
def _pil_height_first(h: int, w: int, nh: int, nw: int, resample: str) -> bool:
    """Whether the installed Pillow resizes (h, w) to (nh, nw) height first: Pillow 13 picks the order of its two
    passes by a rule of its own (its earlier versions always went width first), and the order shows in the
    rounding between the passes. Asked once per geometry, on a noise image where the two orders differ."""
    from PIL import Image

    f = getattr(Image.Resampling, resample.upper())
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    direct = np.asarray(img.resize((nw, nh), f))
    return np.array_equal(direct, np.asarray(img.resize((w, nh), f).resize((nw, nh), f)))


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """transformers' centre crop: top-left at (H - h) // 2, zero padding first where the image is smaller."""
    h, w = x.shape[-2:]
    if h < height or w < width:
        ph, pw = max(height - h, 0), max(width - w, 0)
        top, left = math.ceil(ph / 2), math.ceil(pw / 2)
        x = F.pad(x, (left, pw - left, top, ph - top))
        h, w = x.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top : top + height, left : left + width]


def preprocess(pixels: torch.Tensor, cfg: PretrainedVisionConfig) -> dict[str, torch.Tensor]:
    """uint8 images (B,H,W,3) to the model's image inputs (`pixel_values`; SigLIP 2 also its patch mask and grid)."""
    if pixels.dim() != 4 or pixels.shape[-1] != 3:
        raise FastslowError(f"expected uint8 images of shape (B,H,W,3), got {tuple(pixels.shape)}")
    x = pixels.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if cfg.resize == "shortest_edge":
        x = resize(x, shortest_edge_size(h, w, cfg.size[0]), cfg.resample)
    elif cfg.resize == "fixed":
        x = resize(x, (cfg.size[0], cfg.size[1]), cfg.resample)
    elif cfg.resize == "patches":
        x = resize(x, patches_size(h, w, cfg.patch_size, cfg.max_num_patches), cfg.resample)
    if cfg.crop:
        x = center_crop(x, *cfg.crop)
    if cfg.rescale:
        x = x * cfg.rescale
    if cfg.mean:
        mean = torch.tensor(cfg.mean, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / torch.tensor(cfg.std, device=x.device).view(1, -1, 1, 1)
    if cfg.resize != "patches":
        return {"pixel_values": x}
    return _patches(x, cfg.patch_size, cfg.max_num_patches)


def _patches(x: torch.Tensor, p: int, max_patches: int) -> dict[str, torch.Tensor]:
    """(B,C,H,W) to SigLIP 2's inputs: row-major patches (B, max_patches, p*p*C) zero-padded, their mask, the grid."""
    b, c, h, w = x.shape
    nh, nw = h // p, w // p
    patches = x[:, :, : nh * p, : nw * p].reshape(b, c, nh, p, nw, p).permute(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(b, nh * nw, p * p * c)
    mask = torch.zeros(b, max_patches, dtype=torch.int32, device=x.device)
    mask[:, : nh * nw] = 1
    return {"pixel_values": F.pad(patches, (0, 0, 0, max_patches - nh * nw)), "pixel_attention_mask": mask,
            "spatial_shapes": torch.tensor([[nh, nw]] * b, dtype=torch.long, device=x.device)}
