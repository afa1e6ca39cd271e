"""Slow's visual features of items, and batched Slow scores of (query, candidate item) pairs."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from fastslow.errors import FastslowError
from fastslow.models.blip_slow import BlipSlowModel
from fastslow.models.checkpoint import load_model
from fastslow.models.slow import SlowModel

# Every Slow model: fastslow's own captioner, trained here, and a pretrained BLIP (fastslow/models/blip_slow.py).
SLOW_MODELS = (SlowModel, BlipSlowModel)


def load_slow(checkpoint: str):
    """A Slow checkpoint's model (any of SLOW_MODELS), refusing any other model with a clear error."""
    return load_model(checkpoint, SLOW_MODELS)


@torch.no_grad()
def slow_features(model: SlowModel | BlipSlowModel, pixels: np.ndarray, batch_size: int = 64,
                  progress: bool = False) -> torch.Tensor:
    """Packed tower features of every item, in order; float16 when the tower is frozen (they are a cache)."""
    frozen = not model.config.vision.trainable
    out = []
    for start in tqdm(range(0, len(pixels), batch_size), desc="slow visual features", disable=not progress,
                      leave=False):
        f = model.visual_features(torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size])))
        out.append(f.half() if frozen else f)
    return torch.cat(out)



MAX_GROUP = 16  # texts sharing one item's keys/values in a pass
MAX_CACHED_ITEMS = 2048  # distinct items whose keys/values are held at once while scoring



@torch.inference_mode()
def slow_score_matrix(model: SlowModel | BlipSlowModel, features: torch.Tensor, texts: list[str],
                      candidates: torch.Tensor, batch_pairs: int = 512, progress: bool = False) -> np.ndarray:
    """Slow score (Q, K) float64 of texts[q] against item candidates[q, k] (an index into `features`).

    Serves both Slow over a whole gallery (every row all items) and re-ranking a shortlist.
    Visual tokens and cross-attention keys/values are computed once per distinct item (per block
    of rows when there are many), the text-only first layer once per query, the rest per pair.
    """
    cand = torch.as_tensor(candidates, dtype=torch.long)
    if cand.dim() != 2 or cand.shape[0] != len(texts):
        raise FastslowError(f"slow_score_matrix: candidates must be (Q, K) with Q = {len(texts)} texts, "
                            f"got {tuple(cand.shape)}")
    if cand.numel() and (int(cand.min()) < 0 or int(cand.max()) >= len(features)):
        raise FastslowError(f"slow_score_matrix: candidate index outside the {len(features)} items")
    model.eval()
    q, k = cand.shape
    out = np.zeros((q, k), dtype=np.float64)
    if cand.numel() == 0:
        return out
    if isinstance(model, BlipSlowModel):  # a pretrained cross-encoder scores whole (text, item) pairs itself
        return _pair_scores(model, features, texts, cand, batch_pairs, progress)
    rows = q if torch.unique(cand).numel() <= MAX_CACHED_ITEMS else max(1, MAX_CACHED_ITEMS // k)
    bar = tqdm(total=q * k, desc="slow scoring", unit="pair", disable=not progress, leave=False)
    for r0 in range(0, q, rows):
        block = cand[r0 : r0 + rows]
        items, local = torch.unique(block, return_inverse=True)
        kv = _items_kv(model, features, items, batch_pairs)
        block_texts = texts[r0 : r0 + len(block)]
        # Rows with the same candidates (Slow over a gallery) score as a grid: keys/values shared, not gathered.
        if bool((block == block[:1]).all()):
            for rs, cs in _chunks(block.shape[0], k, batch_pairs):
                scores = model.grid_scores(kv, _as_slice(local[0, cs]), block_texts[rs])
                out[r0 + rs.start : r0 + rs.stop, cs] = scores.cpu().numpy()  # float64, as the grouped path keeps
                bar.update(scores.numel())
        else:
            out[r0 : r0 + len(block)] = _grouped_block(model, kv, local, block_texts, batch_pairs, bar)
    bar.close()
    return out



def _pair_scores(model: BlipSlowModel, features: torch.Tensor, texts: list[str], cand: torch.Tensor,
                 batch_pairs: int, progress: bool) -> np.ndarray:
    """Scores (Q, K) float64 of texts[q] against item cand[q, k], in passes of at most model.max_pairs pairs."""
    q, k = cand.shape
    items, rows = cand.flatten(), torch.arange(q).repeat_interleave(k)
    out = np.empty(q * k, dtype=np.float64)
    step = max(1, min(batch_pairs, model.max_pairs))
    for start in tqdm(range(0, q * k, step), desc="slow scoring", disable=not progress, leave=False):
        part = slice(start, start + step)
        out[part] = model.score_pairs(features[items[part]], [texts[r] for r in rows[part].tolist()]).cpu().numpy()
    return out.reshape(q, k)


def _grouped_block(model: SlowModel, kv: list[tuple], local: torch.Tensor, texts: list[str], batch_pairs: int,
                   bar) -> np.ndarray:
    """Scores (R, K) of texts[r] against item local[r, k] of `kv`, pairs grouped by item.

    The queries that share a candidate (many, when many queries are re-ranked at once) score in
    groups of up to MAX_GROUP against one copy of its keys/values; a group short of the size is
    padded with a repeat of its first query, scored and dropped. A lone query's candidates are
    groups of one: plain pairs.
    """
    r, k = local.shape
    flat = local.flatten()
    group = max(1, min(MAX_GROUP, len(flat) // int(torch.unique(flat).numel())))
    order = torch.argsort(flat, stable=True)
    item_sorted = flat[order]
    counts = torch.bincount(item_sorted)
    run_start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(flat)) - run_start[item_sorted]  # place of each pair in its item's run
    groups_per_item = (counts + group - 1) // group
    group_id = (torch.cumsum(groups_per_item, 0) - groups_per_item)[item_sorted] + pos // group
    slot = group_id * group + pos % group
    num_groups = int(groups_per_item.sum())
    group_items = torch.zeros(num_groups, dtype=torch.long)
    group_items[group_id] = item_sorted
    text_of_slot = torch.full((num_groups * group,), -1, dtype=torch.long)
    text_of_slot[slot] = order // k
    padding = text_of_slot < 0
    text_of_slot[padding] = text_of_slot[(torch.arange(len(text_of_slot)) // group * group)[padding]]
    scores = torch.empty(num_groups * group, dtype=torch.float64)
    states = model.text_states(texts)  # once per text: a query's candidates fall in many passes
    per_pass = max(1, batch_pairs // group)
    for g0 in range(0, num_groups, per_pass):
        rows = slice(g0 * group, min(num_groups, g0 + per_pass) * group)
        chunk = model.grouped_scores(kv, group_items[g0 : g0 + per_pass].to(model.device), states,
                                     text_of_slot[rows].to(model.device), group)
        scores[rows] = chunk.cpu()
        bar.update(int((~padding[rows]).sum()))
    out = torch.empty(len(flat), dtype=torch.float64)
    out[order] = scores[slot]
    return out.view(r, k).numpy()



def _chunks(rows: int, k: int, batch_pairs: int):
    """(row slice, column slice) chunks of about batch_pairs pairs: whole rows, or parts of one row."""
    if k >= batch_pairs:
        for r in range(rows):
            for c in range(0, k, batch_pairs):
                yield slice(r, r + 1), slice(c, min(k, c + batch_pairs))
    else:
        per = max(1, batch_pairs // k)
        for r in range(0, rows, per):
            yield slice(r, min(rows, r + per)), slice(0, k)



def _as_slice(index: torch.Tensor) -> torch.Tensor | slice:
    """A run of consecutive indices as a slice, so keys/values are viewed, not copied (whole-gallery rows)."""
    n = len(index)
    if n and int(index[-1]) - int(index[0]) == n - 1 and bool((index.diff() == 1).all()):
        return slice(int(index[0]), int(index[0]) + n)
    return index



def _items_kv(model: SlowModel, features: torch.Tensor, items: torch.Tensor, batch: int) -> list[tuple]:
    """Per-layer cross-attention keys/values of the given items, in their order."""
    parts = [model.memory_kv(model.visual_tokens(features[items[i : i + batch]])) for i in range(0, len(items), batch)]
    return [(torch.cat([p[layer][0] for p in parts]), torch.cat([p[layer][1] for p in parts]))
            for layer in range(len(model.layers))]

