"""The Fast dual encoder: visual and text towers, projection heads, one L2-normalised space."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastslow.models.config import FastConfig
from fastslow.models.text import build_text_tower
from fastslow.models.vision import build_vision_tower

MAX_LOGIT_SCALE = math.log(100.0)


class ProjectionHead(nn.Module):
    """Linear (hidden=0) or two-layer MLP projection, output L2-normalised."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int):
        super().__init__()
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        else:
            self.net = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


def pool_frames(feats: torch.Tensor, how: str, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) frame features to (B, D) by mean or max over the real frames (frame_mask (B, T), 1 = real)."""
    if frame_mask is None:
        return feats.mean(dim=1) if how == "mean" else feats.amax(dim=1)
    m = frame_mask.to(device=feats.device, dtype=torch.bool).unsqueeze(-1)
    if how == "mean":
        return (feats * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    return feats.masked_fill(~m, float("-inf")).amax(dim=1)


class FastModel(nn.Module):
    """Dual encoder; score(text, item) = encode_text . encode_visual, scaled by 1/temperature in training.

    Videos are pooled over time on the tower features, before the head: one vector per video,
    so a trainer with a frozen tower can cache it, and the head runs once per video, not per frame.
    """

    model_type = "fast"

    def __init__(self, cfg: FastConfig):
        super().__init__()
        self.config = cfg
        self.vision_tower = build_vision_tower(cfg.vision)
        self.text_tower = build_text_tower(cfg.text)
        self.visual_head = ProjectionHead(self.vision_tower.out_dim, cfg.embed_dim, cfg.head_hidden)
        self.text_head = ProjectionHead(self.text_tower.out_dim, cfg.embed_dim, cfg.head_hidden)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def frozen_pretrained_prefixes(self) -> list[str]:
        """State-dict prefixes of frozen towers whose weights reload from their source (not checkpointed)."""
        towers = {"vision_tower.": self.vision_tower, "text_tower.": self.text_tower}
        return [p for p, t in towers.items() if t.pretrained and not t.trainable]

    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images (B,H,W,3) -> (B,D), or videos (B,T,H,W,3) -> (B,T,D): the tower's pooled features."""
        if pixels.dim() == 5:
            b, t = pixels.shape[:2]
            # All frames through the tower as one batch.
            feats = self.visual_features(pixels.reshape(b * t, *pixels.shape[2:]))
            return feats.reshape(b, t, -1)
        return self.vision_tower(self.vision_tower.preprocess(pixels)).pooled

    def embed_visual_features(self, feats: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tower features (B,D) or (B,T,D) (pooled over T first) to unit embeddings (B,E)."""
        feats = feats.to(self.device)
        if feats.dim() == 3:
            feats = pool_frames(feats, self.config.video_pooling, frame_mask)
        return self.visual_head(feats)

    def encode_visual(self, pixels: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images or videos to unit embeddings (B,E)."""
        return self.embed_visual_features(self.visual_features(pixels), frame_mask)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Texts to the text tower's pooled features (B,D)."""
        enc = self.text_tower.tokenize(texts)
        return self.text_tower(enc["input_ids"], enc["attention_mask"]).pooled

    def embed_text_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Text tower features (B,D) to unit embeddings (B,E)."""
        return self.text_head(feats.to(self.device))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Texts to unit embeddings (B,E)."""
        return self.embed_text_features(self.text_features(texts))

    def scale(self) -> torch.Tensor:
        """1 / temperature, with the logit scale clamped at log(100) as CLIP does."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().detach())
