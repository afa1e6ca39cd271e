"""The Slow model's visual side: the vision tower's maps packed into flat per-item features, then fused
("fine-grained": the upsampled deepest map plus the one before it), projected and position-embedded into
visual tokens, and the decoder's cross-attention keys and values of those tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastslow.errors import FastslowError


def _channel_last(f: torch.Tensor, start: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """One map's slice of packed features as contiguous float32 (B, h*w, C), in one copy (fp16 cache included)."""
    c, h, w = shape
    part = f[:, start : start + c * h * w].to(torch.float32, memory_format=torch.contiguous_format)
    return part.view(len(f), h * w, c)


@dataclass
class MapLayout:
    """Where the (pooled) tower maps sit in a flat per-image feature vector."""

    mid: tuple[int, int, int] | None  # (C, h, w), None without fine-grained fusion
    deep: tuple[int, int, int]

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in (self.mid, self.deep) if s is not None)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.mid or self.deep)[1:]


class SlowVisualSide:
    """SlowModel's visual side (a mixin: the modules it uses are SlowModel's own attributes)."""

    def _layouts(self) -> tuple[MapLayout, MapLayout]:
        """Map shapes from one dry run of the tower. Videos pool the map a frame's tokens come from down to
        video_grid (to bound the tokens of many frames); with fine-grained fusion that is the mid map, and the
        deepest map is pooled to half that grid, so the fusion upsamples it as it does for images (pooled to one
        grid, the deepest map's upsampling would be the identity and the fusion nothing finer)."""
        tower, s = self.vision_tower, self.vision_tower.image_size
        was_training = tower.training
        tower.eval()  # a trainable tower's BatchNorm statistics must not see the probe
        with torch.no_grad():
            maps = tower(tower.preprocess(torch.zeros(1, s, s, 3, dtype=torch.uint8))).maps
        tower.train(was_training)
        shapes = [tuple(m.shape[1:]) for m in maps]
        g, fine = self.config.video_grid, self.config.fine_grained
        (mid_c, mid_h, mid_w), (deep_c, deep_h, deep_w) = shapes
        deep_grid = max(1, g // 2) if fine else g
        video = MapLayout((mid_c, min(mid_h, g), min(mid_w, g)) if fine else None,
                          (deep_c, min(deep_h, deep_grid), min(deep_w, deep_grid)))
        return MapLayout(shapes[0] if fine else None, shapes[1]), video

    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images (B,H,W,3) -> (B,F) or videos (B,T,H,W,3) -> (B,T,F): the tower maps, flattened and packed."""
        if pixels.dim() == 5:
            b, t = pixels.shape[:2]
            if t > self.config.max_frames:
                raise FastslowError(f"slow: a video has {t} frames, more than slow.max_frames {self.config.max_frames}")
            return self._pack(pixels.reshape(b * t, *pixels.shape[2:]), self.video_layout).reshape(b, t, -1)
        if pixels.dim() != 4:
            raise FastslowError(f"slow: expected pixels (B,H,W,3) or (B,T,H,W,3), got {tuple(pixels.shape)}")
        return self._pack(pixels, self.image_layout)

    def _pack(self, pixels: torch.Tensor, layout: MapLayout) -> torch.Tensor:
        mid, deep = self.vision_tower(self.vision_tower.preprocess(pixels)).maps
        parts = [(deep, layout.deep)] if layout.mid is None else [(mid, layout.mid), (deep, layout.deep)]
        out = []
        for m, (_, h, w) in parts:
            if m.shape[-2:] != (h, w):
                m = F.adaptive_avg_pool2d(m, (h, w))
            out.append(m.permute(0, 2, 3, 1).flatten(1))  # channel-last: a map's slice is (positions, C) rows
        return torch.cat(out, dim=1)

    def deep_mean(self, features: torch.Tensor) -> torch.Tensor:
        """The deepest map's mean over its grid, (B,C) or (B,T,C), float32.

        For EfficientNet-Lite0 (and tiny_cnn) this is the tower's pooled output, so a Fast model on the
        same frozen tower can take it from the Slow cache instead of running the tower again.
        """
        layout = self.video_layout if features.dim() == 3 else self.image_layout
        deep = features[..., -math.prod(layout.deep):].float()
        return deep.reshape(*deep.shape[:-1], -1, layout.deep[0]).mean(dim=-2)

    def visual_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Packed tower features (B,F) or (B,T,F) to visual tokens (B, N, dim): fused, projected, position-embedded."""
        f = features.to(self.device)
        video = f.dim() == 3
        layout = self.video_layout if video else self.image_layout
        if f.shape[-1] != layout.size:
            raise FastslowError(f"slow: visual features have {f.shape[-1]} values per item, expected {layout.size}")
        b = f.shape[0]
        if video:
            t = f.shape[1]
            if t > self.config.max_frames:
                raise FastslowError(f"slow: a video has {t} frames, more than slow.max_frames {self.config.max_frames}")
            f = f.reshape(b * t, -1)
        x = self.deep_proj(_channel_last(f, len(f[0]) - math.prod(layout.deep), layout.deep))
        gh, gw = layout.deep[1:]
        if layout.mid is not None:
            # Projecting before upsampling: the same result (both linear), on 4x fewer positions.
            x = x.transpose(1, 2).reshape(len(x), -1, gh, gw)
            gh, gw = layout.mid[1:]
            x = F.interpolate(x, size=(gh, gw), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
            x = x + self.mid_proj(_channel_last(f, 0, layout.mid))
        x = self.fuse_norm(x)
        x = x + (self.row_embed[:gh, None] + self.col_embed[None, :gw]).reshape(gh * gw, -1)
        if video:
            x = x.reshape(b, t, gh * gw, -1) + self.time_embed[:t, None]
            x = x.reshape(b, t * gh * gw, -1)
        return x

    def memory_kv(self, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per decoder layer, the cross-attention keys and values of visual tokens (cacheable per item)."""
        memory = self.memory_norm(tokens.to(self.device))
        return [layer.memory_kv(memory) for layer in self.layers]
