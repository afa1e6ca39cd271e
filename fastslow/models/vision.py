"""Visual towers: uint8 images in, a pooled vector and the last two stages' feature maps out."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastslow.errors import FastslowError
from fastslow.models import efficientnet_lite
from fastslow.models.config import VisionTowerConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Tower(nn.Module):
    """A backbone that, when frozen, has no trainable parameters and stays in eval mode."""

    def __init__(self, trainable: bool, pretrained: bool):
        super().__init__()
        self.trainable = trainable
        # Pretrained weights can be reloaded from their source, so checkpoints need not store them.
        self.pretrained = pretrained

    def freeze_if_needed(self) -> None:
        """Apply the trainable flag: frozen towers get requires_grad=False and eval mode."""
        if not self.trainable:
            for p in self.parameters():
                p.requires_grad_(False)
            super().train(False)

    def train(self, mode: bool = True) -> "Tower":
        # A frozen tower's BatchNorm statistics and dropout must not change when the parent trains.
        return super().train(mode and self.trainable)

    def grad_context(self):
        """No autograd graph through a frozen tower: saves the activations' memory."""
        return contextlib.nullcontext() if self.trainable else torch.no_grad()

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


@dataclass
class VisionOutput:
    """Pooled features (B, D) and feature maps [(B, C1, h1, w1), (B, C2, h2, w2)], the deepest last."""

    pooled: torch.Tensor
    maps: list[torch.Tensor]


class VisionTower(Tower):
    """Base visual tower: `preprocess` uint8 (B,H,W,3) pixels, then `forward` to a VisionOutput."""

    out_dim: int
    map_dims: tuple[int, int]
    image_size: int

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float RGB in [0, 255], channels first, to the backbone's input range."""
        raise NotImplementedError

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B,H,W,3) to normalised float (B,3,S,S) on the tower's device, resized if needed."""
        if pixels.dim() != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected pixels of shape (B,H,W,3), got {tuple(pixels.shape)}")
        x = pixels.to(self.device).permute(0, 3, 1, 2).float()
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return self.normalize(x)


class EfficientNetLiteTower(VisionTower):
    """The packaged ImageNet EfficientNet-Lite0: 1280-d pooled, maps at stride 16 (112) and 32 (1280)."""

    def __init__(self, cfg: VisionTowerConfig):
        super().__init__(cfg.trainable, pretrained=True)
        self.net = efficientnet_lite.load_pretrained()
        self.out_dim = efficientnet_lite.HEAD_CHANNELS
        self.map_dims = self.net.map_dims
        self.image_size = cfg.image_size
        self.freeze_if_needed()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return efficientnet_lite.EfficientNetLite0.normalize(x)

    def forward(self, x: torch.Tensor) -> VisionOutput:
        with self.grad_context():
            mid, deep = self.net.forward_maps(x)
            return VisionOutput(pooled=deep.mean(dim=(2, 3)), maps=[mid, deep])


class TinyCNNTower(VisionTower):
    """A small random-init CNN for tests: stem + `depth` stride-2 stages, channels doubling."""

    def __init__(self, cfg: VisionTowerConfig):
        super().__init__(cfg.trainable, pretrained=False)
        w = cfg.width
        self.stem = self._conv(3, w, stride=2)
        chans = [w * 2 ** (i + 1) for i in range(cfg.depth)]
        self.stages = nn.ModuleList()
        cin = w
        for c in chans:
            self.stages.append(nn.Sequential(self._conv(cin, c, stride=2), self._conv(c, c, stride=1)))
            cin = c
        self.out_dim = chans[-1]
        self.map_dims = ((chans[-2] if len(chans) > 1 else w), chans[-1])
        self.image_size = cfg.image_size
        self.freeze_if_needed()

    @staticmethod
    def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
        # GroupNorm, not BatchNorm: tests train with batches of 2-4.
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(1, cout), nn.ReLU())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x / 127.5 - 1.0

    def forward(self, x: torch.Tensor) -> VisionOutput:
        with self.grad_context():
            h = self.stem(x)
            outs = [h]
            for stage in self.stages:
                h = stage(h)
                outs.append(h)
            return VisionOutput(pooled=h.mean(dim=(2, 3)), maps=outs[-2:])


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars while loading, then restore them."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_hf_model(model_cls, name_or_path: str, what: str) -> nn.Module:
    """`model_cls.from_pretrained`, turning load failures and missing weights into FastslowErrors."""
    try:
        with quiet_transformers():
            model, info = model_cls.from_pretrained(name_or_path, output_loading_info=True)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FastslowError(f"{what} {name_or_path!r}: cannot load ({first})") from e
    missing = info.get("missing_keys") or []
    if missing:
        # A silent random init of a "pretrained" backbone would train and index garbage.
        raise FastslowError(
            f"{what} {name_or_path!r}: weights missing for {len(missing)} keys, e.g. {sorted(missing)[0]}"
        )
    return model


def resolve_tower_path(name_or_path: str, what: str) -> str:
    """A tower's `name_or_path` (local folder, hub id, s3:// prefix) as a local folder, so a checkpoint that names
    a hub id or an s3:// prefix loads on any node (the checkpoint's sha256 of the tower still pins its weights)."""
    from fastslow.models.pretrained_ref import local_path

    try:
        return local_path(name_or_path)
    except FastslowError as e:
        raise FastslowError(f"{what}: {e}") from None


def find_model_file(name_or_path: str, filename: str) -> Path | None:
    """A file of a local model dir, or of a hub id already in the local cache (never downloads)."""
    local = Path(name_or_path)
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name_or_path, filename)
    except Exception:  # an id that is not a valid repo name: no cached file
        return None
    return Path(found) if isinstance(found, str) else None


def _mean_std(name_or_path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = find_model_file(name_or_path, "preprocessor_config.json")
    if path is not None:
        pp = json.loads(path.read_text())
        if "image_mean" in pp and "image_std" in pp:
            return tuple(pp["image_mean"]), tuple(pp["image_std"])
    return CLIP_MEAN, CLIP_STD


class HFVisionTower(VisionTower):
    """Any `transformers` vision model or the vision side of a CLIP checkpoint.

    ViT-style models give maps as patch-token grids: the deepest is the last hidden state,
    the one before it the hidden state a quarter of the depth earlier (same grid size).
    """

    def __init__(self, cfg: VisionTowerConfig):
        super().__init__(cfg.trainable, pretrained=True)
        from transformers import AutoConfig, AutoModel, CLIPVisionModel

        path = resolve_tower_path(cfg.name_or_path, "vision tower")
        try:
            with quiet_transformers():
                hf_cfg = AutoConfig.from_pretrained(path)
        except (OSError, ValueError, KeyError) as e:
            raise FastslowError(f"vision tower {cfg.name_or_path!r}: cannot read its config ({e})") from e
        if hf_cfg.model_type == "clip":
            model = load_hf_model(CLIPVisionModel, path, "vision tower")
        else:
            model = load_hf_model(AutoModel, path, "vision tower")
            # Full image-text checkpoints (SigLIP, ...) keep the image side here.
            model = getattr(model, "vision_model", model)
        self.model = model
        vcfg = getattr(model, "config", hf_cfg)
        self.image_size = int(getattr(vcfg, "image_size", None) or cfg.image_size)
        patch = getattr(vcfg, "patch_size", None)
        self.patch_size = patch[0] if isinstance(patch, (list, tuple)) else patch
        mean, std = _mean_std(path)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.freeze_if_needed()
        with torch.no_grad():  # one dry run tells the dims for any architecture
            probe = self(self.normalize(torch.zeros(1, 3, self.image_size, self.image_size)))
        self.out_dim = probe.pooled.shape[1]
        self.map_dims = (probe.maps[0].shape[1], probe.maps[1].shape[1])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def _grid(self, h: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens to a (B, D, g, g) patch grid, dropping prefix tokens (CLS, registers)."""
        if h.dim() == 4:
            return h
        n = h.shape[1]
        if self.patch_size:
            g = self.image_size // int(self.patch_size)
        else:
            g = math.isqrt(n - 1) if math.isqrt(n - 1) ** 2 == n - 1 else math.isqrt(n)
        if g * g > n:
            raise FastslowError(f"vision tower: cannot lay out {n} tokens as a patch grid of {g}x{g}")
        grid = h[:, n - g * g :]
        return grid.transpose(1, 2).reshape(h.shape[0], h.shape[2], g, g)

    def forward(self, x: torch.Tensor) -> VisionOutput:
        with self.grad_context():
            out = self.model(pixel_values=x, output_hidden_states=True)
            hidden = out.hidden_states
            layers = len(hidden) - 1
            deep = self._grid(hidden[-1])
            earlier = hidden[-2] if hidden[-1].dim() == 4 else hidden[layers - max(1, layers // 4)]
            mid = self._grid(earlier)
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = deep.mean(dim=(2, 3))
            return VisionOutput(pooled=pooled.flatten(1), maps=[mid, deep])


def build_vision_tower(cfg: VisionTowerConfig) -> VisionTower:
    """The visual tower a config names."""
    if cfg.kind == "efficientnet_lite0":
        return EfficientNetLiteTower(cfg)
    if cfg.kind == "tiny_cnn":
        return TinyCNNTower(cfg)
    if cfg.kind == "hf":
        return HFVisionTower(cfg)
    raise FastslowError(f"vision.kind: unknown value {cfg.kind!r}")
