"""Why an item ranked where it did: Slow's cross-attention from each query token to the item's visual tokens.

For each token of the query (read left to right, as Slow scores it), where the decoder position that predicts
that token draws from over the item's fine-grained grid (a video's: every frame's grid): each head's attention
weight on a visual token times the size of what that token adds through the head (the norm of its value after the
output projection: Kobayashi et al., "Attention is not only a weight", 2020), summed over heads and layers and
made a distribution. Each token's map sums to 1 over the grid (over all frames for a video).

Why not the bare weights: on the quick table's Slow, a single red circle moved from the left (x 0.25) to the right
(0.75) moved the bare-weight map of "red" from 0.40 to 0.65 of the width but that of "circle" from 0.67 to 0.36,
against the object; weighted by the values' norms, "red" went from 0.36 to 0.68 and "circle" stayed central (0.52,
0.50). A weight on a token whose value is near zero says little about what the answer drew on.
"""

from __future__ import annotations

import math

import torch

from fastslow.errors import FastslowError
from fastslow.models.slow import SlowModel


def token_strings(model: SlowModel, ids: list[int]) -> list[str]:
    """The tokenizer's pieces of `ids` (word pieces for MiniLM's tokenizer; characters for the tiny one's bytes)."""
    hf = model.tokenizer.hf
    if hf is None:
        return [bytes([i]).decode("latin-1") for i in ids]
    return hf.convert_ids_to_tokens(ids)


@torch.no_grad()
def attention_maps(model, features: torch.Tensor, text: str) -> dict:
    """{'tokens': [str], 'grid': [rows, cols], 'frames': T or None, 'maps': (tokens, [T,] rows, cols) float}: the
    cross-attention of `text`'s tokens over one item's visual tokens, its packed features (F,) or video (T, F)."""
    if not isinstance(model, SlowModel):
        raise FastslowError(f"explain: the re-ranker's model ({type(model).__name__}) gives no attention maps; "
                            "fastslow's own Slow does")
    video = features.dim() == 2
    tokens = model.visual_tokens(features[None])
    kv = model.memory_kv(tokens)
    seq = model.token_ids([text])[0][: model.config.max_length - 1]
    inp, _ = model._inputs([seq], "l2r")
    x = model.embed_text(inp, "l2r")
    total = None
    for layer, (k, v) in zip(model.layers, kv):
        x = layer.self_block(x)
        q = layer.cross_query(x)
        # What scaled_dot_product_attention computes inside the layer, kept: softmax(q k^T / sqrt(d_head)).
        weights = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)  # (1, heads, L, N)
        heads, head_dim = v.shape[1], v.shape[-1]
        out = layer.cross_out.weight.view(-1, heads, head_dim)  # the output projection's columns per head
        value_norms = torch.einsum("bhne,dhe->bhnd", v, out).norm(dim=-1)  # (1, heads, N)
        drawn = (weights * value_norms[:, :, None, :]).sum(dim=1)
        total = drawn if total is None else total + drawn
        x = layer.cross_ff_block(x, q, k, v)
    # Decoder position i reads BOS + tokens before i and predicts token i.
    maps = total[0, : len(seq)].float()
    maps = (maps / maps.sum(dim=-1, keepdim=True).clamp_min(1e-12)).cpu()
    layout = model.video_layout if video else model.image_layout
    rows, cols = layout.grid
    frames = features.shape[0] if video else None
    shape = (len(seq), frames, rows, cols) if video else (len(seq), rows, cols)
    return {"tokens": token_strings(model, seq), "grid": [rows, cols], "frames": frames, "maps": maps.reshape(shape)}
