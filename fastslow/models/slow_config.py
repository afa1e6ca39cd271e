"""The Slow model's config, its special token ids and reading directions, and the caption tokenizer.

`build_output_vocab` gives the token ids a Slow decoder predicts (those of its training captions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastslow.errors import FastslowError
from fastslow.models.config import TextTowerConfig, VisionTowerConfig, _check_positive
from fastslow.models.text import MIN_VOCAB, minilm_path
from fastslow.models.vision import quiet_transformers

DIRECTIONS = ("l2r", "r2l")
DIRECTION_CHOICES = ("both", "l2r", "r2l")
PAD, BOS, EOS, UNK = 0, 1, 2, 3  # the decoder's own special ids; output_vocab[i] becomes 4 + i
NUM_SPECIAL = 4


@dataclass
class SlowConfig:
    """The Slow captioner; only the text config's tokenizer is used (the decoder learns its own embeddings)."""

    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    # Defaults measured on the synthetic benchmark on 2 CPU cores: one decoder layer of width 128 matched two
    # layers and width 256 at a fraction of the cost per pair; dropout only slowed learning.
    dim: int = 128
    layers: int = 1
    heads: int = 4
    ffn: int = 256
    dropout: float = 0.0
    fine_grained: bool = True  # fuse the upsampled deepest map with the one before it; False: deepest alone
    video_grid: int = 4  # per-frame token grid side for videos (the deepest map pooled to half of it when fused)
    max_frames: int = 16
    max_length: int = 32  # decoder input length, BOS included
    directions: str = "both"
    output_vocab: list[int] | None = None  # tokenizer ids the decoder predicts; others map to UNK

    def __post_init__(self) -> None:
        _check_positive("slow", dim=self.dim, layers=self.layers, heads=self.heads, ffn=self.ffn,
                        video_grid=self.video_grid, max_frames=self.max_frames)
        if self.dim % self.heads:
            raise FastslowError(f"slow.dim: {self.dim} is not divisible by slow.heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise FastslowError(f"slow.dropout: must be in [0, 1), got {self.dropout}")
        if self.max_length < 2:
            raise FastslowError(f"slow.max_length: must be at least 2, got {self.max_length}")
        if self.directions not in DIRECTION_CHOICES:
            raise FastslowError(f"slow.directions: unknown value {self.directions!r} "
                                f"(expected one of {', '.join(DIRECTION_CHOICES)})")
        if self.output_vocab is not None:
            if not self.output_vocab or any(i < 0 for i in self.output_vocab):
                raise FastslowError("slow.output_vocab: must be a non-empty list of token ids >= 0")
            if len(set(self.output_vocab)) != len(self.output_vocab):
                raise FastslowError("slow.output_vocab: has repeated token ids")

    @property
    def direction_list(self) -> tuple[str, ...]:
        return DIRECTIONS if self.directions == "both" else (self.directions,)


class CaptionTokenizer:
    """Texts to the text config's token ids, without special tokens (bytes for the tiny text kind)."""

    def __init__(self, cfg: TextTowerConfig):
        self.hf = None
        if cfg.kind == "tiny_transformer":
            self.vocab_size = 256
            return
        from transformers import AutoTokenizer

        path = str(minilm_path()) if cfg.kind == "minilm" else cfg.name_or_path
        try:
            with quiet_transformers():
                self.hf = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError) as e:
            raise FastslowError(f"slow tokenizer {path!r}: cannot load ({e})") from e
        self.vocab_size = len(self.hf)
        if self.vocab_size <= MIN_VOCAB:  # offline hub loads can silently give only special tokens
            raise FastslowError(f"slow tokenizer {path!r}: loaded with a vocabulary of {self.vocab_size} tokens")

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.hf is None:
            return [list(t.encode("utf-8")) for t in texts]
        return self.hf(list(texts), add_special_tokens=False)["input_ids"]


def build_output_vocab(texts: list[str], text: TextTowerConfig | None = None) -> list[int]:
    """The sorted token ids that occur in `texts` (the training captions), for `SlowConfig.output_vocab`."""
    ids = CaptionTokenizer(text or TextTowerConfig())(texts)
    return sorted({i for seq in ids for i in seq})
