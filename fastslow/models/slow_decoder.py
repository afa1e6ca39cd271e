"""The Slow decoder: its layer (causal self-attention, cross-attention to the visual tokens, feed-forward) and
the text side of SlowModel (decoder inputs in both reading directions, embeddings, token log-probabilities)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastslow.errors import FastslowError
from fastslow.models.slow_config import BOS, DIRECTIONS, EOS, PAD, UNK


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


@dataclass
class TextStates:
    """Per reading direction, (decoder state after the first self-attention, its cross-attention query, targets)."""

    per_direction: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class SlowTextSide:
    """SlowModel's text side (a mixin: the modules it uses are SlowModel's own attributes)."""

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Tokenizer ids of `texts` without the words the decoder cannot predict (any token outside its vocabulary).

        A word the training captions never held tells Slow nothing about an item, and as UNK (an input it never
        saw, a target it never learnt) it would add a large, item-dependent term to every candidate's score;
        left out, a query with an unseen word scores every candidate exactly as the query without it.
        """
        seqs = self.tokenizer(texts)
        unknown = self.id_lookup.cpu() == UNK

        def has_unknown(ids: list[int]) -> bool:
            return bool(unknown[torch.tensor(ids, dtype=torch.long)].any())

        for i, seq in enumerate(seqs):
            if has_unknown(seq):
                words = texts[i].split()
                known = [w for w, ids in zip(words, self.tokenizer(words)) if not has_unknown(ids)]
                seqs[i] = self.tokenizer([" ".join(known)])[0]
        return seqs

    def scored_token_counts(self, texts: list[str]) -> torch.Tensor:
        """(B,) how many target tokens enter each text's score in either direction: its known tokens as the
        decoder reads them (truncated to max_length - 1), plus EOS."""
        return (self.text_inputs(texts, "l2r")[1] != PAD).sum(dim=1).cpu()  # the targets the score sums over

    def text_inputs(self, texts: list[str], direction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder inputs and targets (B, L), compact ids: inputs BOS + tokens, targets tokens + EOS, then PAD."""
        return self._inputs(self.token_ids(texts), direction)

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
        """Log-probability (B, L) float64 of each target token, 0 at padding and at UNK (a token outside the
        decoder's vocabulary that `token_ids` left in: the model never learnt to predict it).

        The target's logit minus the log-sum-exp, without a (B, L, vocab) log-softmax: the subtraction
        (and the caller's sum) in float64 keeps near-ties apart at a fraction of a float64 softmax's cost.
        """
        logits = self.head(self.out_norm(hidden))
        target = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).double()
        lp = target - torch.logsumexp(logits, dim=-1).double()
        return lp.masked_fill((tgt == PAD) | (tgt == UNK), 0.0)

    def decode(self, inp: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]], direction: str) -> torch.Tensor:
        """Hidden states (B, L, dim) of the decoder over inputs `inp` given per-layer visual keys/values."""
        x = self.embed_text(inp, direction)
        for layer, (k, v) in zip(self.layers, kv):
            x = layer(x, k, v)
        return x
