"""The Slow model: a captioner whose log-likelihood of a text given an item, read both ways, is the score.

Visual tokens: the vision tower's deepest map, upsampled and fused with the map before it
("fine-grained"), projected to `dim`, with learned row/column embeddings (and a learned
embedding per frame for videos, so a time-reversed clip reads differently). A transformer
decoder (causal self-attention over caption tokens, cross-attention to the visual tokens)
predicts each token. One decoder serves both reading directions: a learned direction
embedding is added to every input token, and right-to-left captions are the token list reversed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fastslow.errors import FastslowError
from fastslow.models.checkpoint import register_model_type
from fastslow.models.config import TextTowerConfig, VisionTowerConfig, _check_positive
from fastslow.models.text import MIN_VOCAB, minilm_path
from fastslow.models.vision import build_vision_tower, quiet_transformers

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
    video_grid: int = 4  # per-frame token grid side for videos (maps pooled down to it)
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


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer; split into parts so scoring can share the text-only first part across items."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.self_out = nn.Linear(dim, dim)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_kv = nn.Linear(dim, 2 * dim)
        self.cross_out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.drop = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        b, h, n, e = x.shape
        return x.transpose(1, 2).reshape(b, n, h * e)

    def self_block(self, x: torch.Tensor) -> torch.Tensor:
        """Causal self-attention. Right padding needs no key mask: real tokens never look right."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        p = self.p if self.training else 0.0
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), dropout_p=p, is_causal=True)
        return x + self.drop(self.self_out(self._merge(a)))

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values (B, heads, N, dim/heads) of normed visual tokens."""
        k, v = self.cross_kv(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def cross_query(self, x: torch.Tensor) -> torch.Tensor:
        return self._heads(self.cross_q(self.norm2(x)))

    def cross_ff_block(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       group: int = 1) -> torch.Tensor:
        """Cross-attention and feed-forward; with `group` > 1, each k/v row serves `group` consecutive rows of x."""
        p = self.p if self.training else 0.0
        if group == 1:
            a = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            # Queries never interact, so a group's texts attend as one long query sequence: no copies of k/v.
            n, (_, h, length, e) = len(k), q.shape
            grouped = q.view(n, group, h, length, e).transpose(1, 2).reshape(n, h, group * length, e)
            a = F.scaled_dot_product_attention(grouped, k, v, dropout_p=p)
            a = a.view(n, h, group, length, e).transpose(1, 2).reshape(n * group, h, length, e)
        x = x + self.drop(self.cross_out(self._merge(a)))
        return x + self.drop(self.ff(self.norm3(x)))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: int = 1) -> torch.Tensor:
        x = self.self_block(x)
        return self.cross_ff_block(x, self.cross_query(x), k, v, group)


def _channel_last(f: torch.Tensor, start: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """One map's slice of packed features as contiguous float32 (B, h*w, C), in one copy (fp16 cache included)."""
    c, h, w = shape
    part = f[:, start : start + c * h * w].to(torch.float32, memory_format=torch.contiguous_format)
    return part.view(len(f), h * w, c)


@dataclass
class TextStates:
    """Per reading direction, (decoder state after the first self-attention, its cross-attention query, targets)."""

    per_direction: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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


class SlowModel(nn.Module):
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

    # ---- visual side -------------------------------------------------------------------------------

    def _layouts(self) -> tuple[MapLayout, MapLayout]:
        """Map shapes from one dry run of the tower; videos pool each map down to video_grid."""
        tower, s = self.vision_tower, self.vision_tower.image_size
        was_training = tower.training
        tower.eval()  # a trainable tower's BatchNorm statistics must not see the probe
        with torch.no_grad():
            maps = tower(tower.preprocess(torch.zeros(1, s, s, 3, dtype=torch.uint8))).maps
        tower.train(was_training)
        shapes = [tuple(m.shape[1:]) for m in maps]
        g = self.config.video_grid
        pooled = [(c, min(h, g), min(w, g)) for c, h, w in shapes]
        fine = self.config.fine_grained
        return MapLayout(shapes[0] if fine else None, shapes[1]), MapLayout(pooled[0] if fine else None, pooled[1])

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def frozen_pretrained_prefixes(self) -> list[str]:
        """State-dict prefixes of frozen towers whose weights reload from their source (not checkpointed)."""
        t = self.vision_tower
        return ["vision_tower."] if t.pretrained and not t.trainable else []

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

    # ---- text side ---------------------------------------------------------------------------------

    def text_inputs(self, texts: list[str], direction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder inputs and targets (B, L), compact ids: inputs BOS + tokens, targets tokens + EOS, then PAD."""
        return self._inputs(self.tokenizer(texts), direction)

    def _inputs(self, seqs: list[list[int]], direction: str) -> tuple[torch.Tensor, torch.Tensor]:
        if direction not in DIRECTIONS:
            raise FastslowError(f"slow: direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        seqs = [s[: self.config.max_length - 1] for s in seqs]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        length = int(lengths.max()) + 1 if len(seqs) else 1
        pos = torch.arange(length)
        real = pos < lengths[:, None]
        raw = torch.zeros((len(seqs), length), dtype=torch.long)
        raw[real] = torch.tensor([i for s in seqs for i in s], dtype=torch.long)
        if direction == "r2l":
            raw = raw.gather(1, (lengths[:, None] - 1 - pos).clamp(min=0))
        tgt = torch.where(real, self.id_lookup.cpu()[raw], PAD)
        tgt[torch.arange(len(seqs)), lengths] = EOS
        inp = torch.cat([torch.full((len(seqs), 1), BOS), tgt[:, :-1]], dim=1)
        inp = torch.where(pos <= lengths[:, None], inp, PAD)
        return inp.to(self.device), tgt.to(self.device)

    def embed_text(self, inp: torch.Tensor, direction: str) -> torch.Tensor:
        """Token, position and direction embeddings (B, L, dim)."""
        x = self.token_embed(inp) + self.pos_embed[: inp.shape[1]] + self.dir_embed[DIRECTIONS.index(direction)]
        return self.embed_drop(x)

    def token_log_probs(self, hidden: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Log-probability (B, L) float64 of each target token, 0 at padding.

        The target's logit minus the log-sum-exp, without a (B, L, vocab) log-softmax: the subtraction
        (and the caller's sum) in float64 keeps near-ties apart at a fraction of a float64 softmax's cost.
        """
        logits = self.head(self.out_norm(hidden))
        target = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).double()
        lp = target - torch.logsumexp(logits, dim=-1).double()
        return lp.masked_fill(tgt == PAD, 0.0)

    def decode(self, inp: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]], direction: str) -> torch.Tensor:
        """Hidden states (B, L, dim) of the decoder over inputs `inp` given per-layer visual keys/values."""
        x = self.embed_text(inp, direction)
        for layer, (k, v) in zip(self.layers, kv):
            x = layer(x, k, v)
        return x

    # ---- the API -----------------------------------------------------------------------------------

    def log_likelihood(self, tokens: torch.Tensor, texts: list[str], direction: str) -> torch.Tensor:
        """Sum of token log-probs (B,) float64 of texts[b] given visual tokens row b, read in `direction`."""
        if len(texts) != tokens.shape[0]:
            raise FastslowError(f"slow: {tokens.shape[0]} items but {len(texts)} texts")
        inp, tgt = self.text_inputs(texts, direction)
        return self.token_log_probs(self.decode(inp, self.memory_kv(tokens), direction), tgt).sum(dim=1)

    def score(self, tokens: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Mean over config.directions of the caption log-likelihood (B,) float64."""
        kv, seqs = self.memory_kv(tokens), self.tokenizer(texts)
        total = None
        for direction in self.config.direction_list:
            inp, tgt = self._inputs(seqs, direction)
            ll = self.token_log_probs(self.decode(inp, kv, direction), tgt).sum(dim=1)
            total = ll if total is None else total + ll
        return total / len(self.config.direction_list)

    def pair_scores(self, kv: list[tuple[torch.Tensor, torch.Tensor]], item_index: torch.Tensor | slice,
                    texts: list[str], text_index: torch.Tensor) -> torch.Tensor:
        """Scores (P,) float64 of pairs (texts[text_index[p]], item item_index[p]), from per-item keys/values `kv`."""
        return self.grouped_scores(kv, item_index, texts, text_index, group=1)

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
        seqs, first, out = self.tokenizer(texts), self.layers[0], []
        for direction in self.config.direction_list:
            inp, tgt = self._inputs(seqs, direction)
            x = first.self_block(self.embed_text(inp, direction))
            out.append((x, first.cross_query(x), tgt))
        return TextStates(out)

    def loss(self, tokens: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Mean per-token negative log-likelihood over the configured directions (the captioning objective)."""
        kv, seqs = self.memory_kv(tokens), self.tokenizer(texts)
        total, count = 0.0, 0
        for direction in self.config.direction_list:
            inp, tgt = self._inputs(seqs, direction)
            logits = self.head(self.out_norm(self.decode(inp, kv, direction)))
            total = total + F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD, reduction="sum")
            count += int((tgt != PAD).sum())
        return total / max(count, 1)


register_model_type("slow", SlowConfig, SlowModel)
