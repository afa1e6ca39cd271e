"""The Fast dual encoder: visual and text towers, projection heads, one L2-normalised space."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastslow.errors import FastslowError
from fastslow.models.config import FastConfig
from fastslow.models.text import build_text_tower, masked_mean
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


def masked_mean_max(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, N, D) to (B, 2D): mean and max over the N positions where mask (B, N) is true (all if None)."""
    return torch.cat([pool_frames(x, "mean", mask), pool_frames(x, "max", mask)], dim=-1)


class TokenPool(nn.Module):
    """Feature-map positions (B, N, C) through a shared MLP, then mean and max over positions: (B, 2*hidden)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU())
        self.out_dim = 2 * hidden

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean_max(self.mlp(self.norm(tokens)), mask)


class AttentionTextPool(nn.Module):
    """Token states (B, L, D), zero rows = padding, to their mean plus a learned query's attention read-out."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        heads = heads if dim % heads == 0 else 1
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        real = tokens.abs().sum(dim=-1) > 0
        mean = masked_mean(tokens, real)
        read = self.attn(self.query.expand(len(tokens), -1, -1), tokens, tokens, key_padding_mask=~real)[0][:, 0]
        return mean + read


class FastEncoder(nn.Module):
    """What every Fast model offers (FastModel, PretrainedFastModel): unit embeddings of items and texts, through
    tower features a trainer can cache, and a learned logit scale. Subclasses define the four feature methods."""

    config: object  # has embed_dim, vision.image_size, vision.trainable, text.trainable
    logit_scale: nn.Parameter

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def frozen_pretrained_prefixes(self) -> list[str]:
        """State-dict prefixes of frozen towers whose weights reload from their source (not checkpointed)."""
        return []

    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_visual_features(self, feats: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def text_features(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def embed_text_features(self, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_visual(self, pixels: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images (B,H,W,3) or videos (B,T,H,W,3) to unit embeddings (B,E)."""
        return self.embed_visual_features(self.visual_features(pixels), frame_mask)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Texts to unit embeddings (B,E)."""
        return self.embed_text_features(self.text_features(texts))

    def scale(self) -> torch.Tensor:
        """1 / temperature: exp of the logit scale, which `after_optimizer_step` keeps in [0, log 100]."""
        return self.logit_scale.exp()

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Clamp the logit scale to [0, log 100] (temperature 1 to 0.01), as open_clip does after each step."""
        self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().detach())


class FastModel(FastEncoder):
    """Dual encoder; score(text, item) = encode_text . encode_visual, scaled by 1/temperature in training.

    Videos are pooled over time on the tower features, before the head: one vector per video,
    so a trainer with a frozen tower can cache it, and the head runs once per video, not per frame.
    """

    model_type = "fast"
    # The state-dict prefixes of the text side, which a model built with text=False leaves out.
    TEXT_PREFIXES = ("text_tower.", "text_pool.", "text_head.")

    def __init__(self, cfg: FastConfig, text: bool = True):
        """`text=False`: the visual side alone, for embedding items (indexing loads no text tower, seconds per
        worker with a pretrained one); text_features then fails."""
        super().__init__()
        self.config = cfg
        self.vision_tower = build_vision_tower(cfg.vision)
        self.text_tower = build_text_tower(cfg.text) if text else None
        visual_dim = self.vision_tower.out_dim
        if cfg.vision_pooling == "mid_tokens":
            self.token_pool = TokenPool(self.vision_tower.map_dims[0], cfg.token_hidden)
            visual_dim = self.token_pool.out_dim
        if cfg.text_pooling == "attention" and text:
            self.text_pool = AttentionTextPool(self.text_tower.out_dim)
        self.visual_dropout = nn.Dropout(cfg.visual_dropout)
        self.visual_head = ProjectionHead(visual_dim, cfg.embed_dim, cfg.head_hidden)
        if text:
            self.text_head = ProjectionHead(self.text_tower.out_dim, cfg.embed_dim, cfg.head_hidden)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def frozen_pretrained_prefixes(self) -> list[str]:
        """State-dict prefixes of frozen towers whose weights reload from their source (not checkpointed)."""
        towers = {"vision_tower.": self.vision_tower, "text_tower.": self.text_tower}
        return [p for p, t in towers.items() if t is not None and t.pretrained and not t.trainable]

    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images (B,H,W,3) -> (B,F), or videos (B,T,H,W,3) -> (B,T,F): what the frozen tower gives.

        F is the pooled vector (global pooling) or the stage-before-last map, channel-last and
        flattened (mid_tokens pooling).
        """
        if pixels.dim() == 5:
            b, t = pixels.shape[:2]
            # All frames through the tower as one batch.
            feats = self.visual_features(pixels.reshape(b * t, *pixels.shape[2:]))
            return feats.reshape(b, t, -1)
        out = self.vision_tower(self.vision_tower.preprocess(pixels))
        if self.config.vision_pooling == "mid_tokens":
            return out.maps[0].permute(0, 2, 3, 1).flatten(1)
        return out.pooled

    def embed_visual_features(self, feats: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tower features (B,F) or (B,T,F) (pooled over T first) to unit embeddings (B,E)."""
        feats = feats.to(self.device).float()
        if self.config.vision_pooling == "mid_tokens":
            b, c = feats.shape[0], self.vision_tower.map_dims[0]
            tokens = feats.reshape(b, -1, c)  # a video's tokens are every position of every frame
            mask = None
            if feats.dim() == 3 and frame_mask is not None:
                per_frame = feats.shape[2] // c
                mask = frame_mask.to(self.device).bool().repeat_interleave(per_frame, dim=1)
            feats = self.token_pool(tokens, mask)
        elif feats.dim() == 3:
            feats = pool_frames(feats, self.config.video_pooling, frame_mask)
        return self.visual_head(self.visual_dropout(feats))

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Texts to the text tower's pooled features (B,D), or for attention pooling its token
        states (B,L,D) padded with zero rows to the tower's max_length (so cached batches stack)."""
        if self.text_tower is None:
            raise FastslowError("this Fast model was loaded without its text side (visual_only): it embeds items only")
        enc = self.text_tower.tokenize(texts)
        out = self.text_tower(enc["input_ids"], enc["attention_mask"])
        if self.config.text_pooling == "mean":
            return out.pooled
        tokens = out.tokens * out.mask.unsqueeze(-1).to(out.tokens.dtype)
        return F.pad(tokens, (0, 0, 0, self.text_tower.max_length - tokens.shape[1]))

    def embed_text_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Text tower features (as text_features gives them) to unit embeddings (B,E)."""
        feats = feats.to(self.device).float()
        if self.config.text_pooling == "attention":
            feats = self.text_pool(feats)
        return self.text_head(feats)

