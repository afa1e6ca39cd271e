"""The Slow model: a captioner whose log-likelihood of a text given an item, read both ways, is the score.

Visual tokens: the vision tower's deepest map, upsampled and fused with the map before it
("fine-grained"), projected to `dim`, with learned row/column embeddings (and a learned
embedding per frame for videos, so a time-reversed clip reads differently). A transformer
decoder (causal self-attention over caption tokens, cross-attention to the visual tokens)
predicts each token. One decoder serves both reading directions: a learned direction
embedding is added to every input token, and right-to-left captions are the token list reversed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastslow.errors import FastslowError
from fastslow.models.checkpoint import register_model_type
from fastslow.models.slow_config import (
    BOS,
    DIRECTION_CHOICES,
    DIRECTIONS,
    EOS,
    NUM_SPECIAL,
    PAD,
    UNK,
    CaptionTokenizer,
    SlowConfig,
    build_output_vocab,
)
from fastslow.models.slow_decoder import DecoderLayer, SlowTextSide, TextStates
from fastslow.models.slow_visual import MapLayout, SlowVisualSide, _channel_last
from fastslow.models.vision import build_vision_tower

__all__ = [
    "BOS",
    "DIRECTIONS",
    "DIRECTION_CHOICES",
    "EOS",
    "NUM_SPECIAL",
    "PAD",
    "UNK",
    "CaptionTokenizer",
    "DecoderLayer",
    "MapLayout",
    "SlowConfig",
    "SlowModel",
    "TextStates",
    "_channel_last",
    "build_output_vocab",
]


class SlowModel(SlowVisualSide, SlowTextSide, nn.Module):
    """Caption log-likelihood of a text given an image or video; score = mean over the configured directions."""

    model_type = "slow"

    def __init__(self, cfg: SlowConfig):
        super().__init__()
        self.config = cfg
        self.tokenizer = CaptionTokenizer(cfg.text)
        vocab = cfg.output_vocab if cfg.output_vocab is not None else list(range(self.tokenizer.vocab_size))
        if max(vocab) >= self.tokenizer.vocab_size:
            raise FastslowError(f"slow.output_vocab: id {max(vocab)} is outside the tokenizer's "
                                f"{self.tokenizer.vocab_size} tokens")
        lookup = torch.full((self.tokenizer.vocab_size,), UNK, dtype=torch.long)
        lookup[torch.tensor(vocab, dtype=torch.long)] = torch.arange(len(vocab)) + NUM_SPECIAL
        self.register_buffer("id_lookup", lookup, persistent=False)
        self.vision_tower = build_vision_tower(cfg.vision)
        self.image_layout, self.video_layout = self._layouts()
        d = cfg.dim
        mid_c, deep_c = self.vision_tower.map_dims
        self.deep_proj = nn.Linear(deep_c, d)  # a 1x1 convolution on channel-last maps
        self.mid_proj = nn.Linear(mid_c, d) if cfg.fine_grained else None
        self.fuse_norm = nn.LayerNorm(d)
        gh, gw = self.image_layout.grid
        self.row_embed = nn.Parameter(torch.randn(gh, d) * 0.02)
        self.col_embed = nn.Parameter(torch.randn(gw, d) * 0.02)
        self.time_embed = nn.Parameter(torch.randn(cfg.max_frames, d) * 0.02)
        self.memory_norm = nn.LayerNorm(d)
        self.vocab_size = len(vocab) + NUM_SPECIAL
        self.token_embed = nn.Embedding(self.vocab_size, d)
        self.pos_embed = nn.Parameter(torch.randn(cfg.max_length, d) * 0.02)
        self.dir_embed = nn.Parameter(torch.randn(len(DIRECTIONS), d) * 0.02)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(DecoderLayer(d, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.layers))
        self.out_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.vocab_size)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def frozen_pretrained_prefixes(self) -> list[str]:
        """State-dict prefixes of frozen towers whose weights reload from their source (not checkpointed)."""
        t = self.vision_tower
        return ["vision_tower."] if t.pretrained and not t.trainable else []

    # ---- the API -----------------------------------------------------------------------------------

    def log_likelihood(self, tokens: torch.Tensor, texts: list[str], direction: str) -> torch.Tensor:
        """Sum of token log-probs (B,) float64 of texts[b] given visual tokens row b, read in `direction`."""
        if len(texts) != tokens.shape[0]:
            raise FastslowError(f"slow: {tokens.shape[0]} items but {len(texts)} texts")
        inp, tgt = self.text_inputs(texts, direction)
        return self.token_log_probs(self.decode(inp, self.memory_kv(tokens), direction), tgt).sum(dim=1)

    def score(self, tokens: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Mean over config.directions of the caption log-likelihood (B,) float64."""
        kv, seqs = self.memory_kv(tokens), self.token_ids(texts)
        total = None
        for direction in self.config.direction_list:
            inp, tgt = self._inputs(seqs, direction)
            ll = self.token_log_probs(self.decode(inp, kv, direction), tgt).sum(dim=1)
            total = ll if total is None else total + ll
        return total / len(self.config.direction_list)

    def grid_scores(self, kv: list[tuple[torch.Tensor, torch.Tensor]], items: torch.Tensor | slice,
                    texts: list[str]) -> torch.Tensor:
        """Scores (len(texts), n) float64 of every text against every item `items` of `kv` (a slice copies nothing)."""
        n, r = len(kv[0][0][items]), len(texts)
        text_index = torch.arange(r, device=self.device).repeat(n)
        return self.grouped_scores(kv, items, texts, text_index, group=r).view(n, r).T

    def grouped_scores(self, kv: list[tuple[torch.Tensor, torch.Tensor]], group_items: torch.Tensor | slice,
                       texts: list[str] | TextStates, text_index: torch.Tensor, group: int) -> torch.Tensor:
        """Scores (G * group,) float64: row j * group + m is text text_index[j * group + m] against item
        group_items[j] of `kv`.

        The `group` texts of an item attend to its keys/values as one long query sequence (they never
        interact), so keys/values are gathered once per group, not once per pair. `texts` may be the
        `text_states` of the texts, computed once when many calls share them.
        """
        states = texts if isinstance(texts, TextStates) else self.text_states(texts)
        item_kv = [(k[group_items], v[group_items]) for k, v in kv]
        first, total = self.layers[0], None
        for x, q, tgt in states.per_direction:
            x, q, tgt = x[text_index], q[text_index], tgt[text_index]
            x = first.cross_ff_block(x, q, *item_kv[0], group)
            for layer, (k, v) in zip(self.layers[1:], item_kv[1:]):
                x = layer(x, k, v, group)
            ll = self.token_log_probs(x, tgt).sum(dim=1)
            total = ll if total is None else total + ll
        return total / len(states.per_direction)

    def text_states(self, texts: list[str]) -> TextStates:
        """The text-only part of the first decoder layer (self-attention, cross-attention query) per direction:
        it does not depend on the item, so it runs once per text, not once per pair."""
        seqs, first, out = self.token_ids(texts), self.layers[0], []
        for direction in self.config.direction_list:
            inp, tgt = self._inputs(seqs, direction)
            x = first.self_block(self.embed_text(inp, direction))
            out.append((x, first.cross_query(x), tgt))
        return TextStates(out)

    def loss(self, tokens: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Mean per-token negative log-likelihood over the configured directions (the captioning objective)."""
        kv, seqs = self.memory_kv(tokens), self.token_ids(texts)
        total, count = 0.0, 0
        for direction in self.config.direction_list:
            inp, tgt = self._inputs(seqs, direction)
            logits = self.head(self.out_norm(self.decode(inp, kv, direction)))
            total = total + F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD, reduction="sum")
            count += int((tgt != PAD).sum())
        return total / max(count, 1)


register_model_type("slow", SlowConfig, SlowModel)
