"""One-process training of the Slow captioner, and batched Slow scoring of (query, candidate item) pairs.

As for Fast, a frozen tower runs once over the data and its maps are cached (in float16),
so an epoch only runs the fusion and the decoder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from fastslow.data.loaded import LoadedSplit
from fastslow.errors import FastslowError
from fastslow.eval import RetrievalResult, metrics_from_ranks, ranks_of_true
from fastslow.log import get_logger
from fastslow.loop import fit
from fastslow.models.slow import SlowConfig, SlowModel, build_output_vocab
from fastslow.training import Batch

log = get_logger(__name__)


@dataclass
class SlowTrainConfig:
    """Optimisation settings of the Slow model."""

    epochs: int = 10  # the synthetic benchmark: 15 for its 4,000 images (10 is seed-sensitive), 25 for its 1,200 videos
    batch_size: int = 16  # small batches at a high rate learned binding far faster than 64 at 5e-4
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0
    encode_batch_size: int = 64
    grad_clip: float = 1.0  # max gradient norm; 0 = off


def make_slow_model(cfg: SlowConfig, train_texts: list[str]) -> SlowModel:
    """A Slow model whose decoder predicts over the tokens of `train_texts` (unless cfg already names a vocabulary)."""
    if cfg.output_vocab is None:
        cfg = replace(cfg, output_vocab=build_output_vocab(train_texts, cfg.text))
    return SlowModel(cfg)


@torch.no_grad()
def slow_features(model: SlowModel, pixels: np.ndarray, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Packed tower features of every item, in order; float16 when the tower is frozen (they are a cache)."""
    frozen = not model.config.vision.trainable
    out = []
    for start in tqdm(range(0, len(pixels), batch_size), desc="slow visual features", disable=not progress,
                      leave=False):
        f = model.visual_features(torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size])))
        out.append(f.half() if frozen else f)
    return torch.cat(out)


class SlowBatches:
    """Slow training batches: each epoch every item once, with one of its captions drawn at random."""

    def __init__(self, model: SlowModel, split: LoadedSplit, cfg: SlowTrainConfig, progress: bool = True,
                 features: torch.Tensor | None = None):
        if len(split.ids) == 0:
            raise FastslowError("train_slow: the training split has no items")
        self.split, self.cfg = split, cfg
        self.texts, caption_item = split.caption_pairs()
        self.first_caption = np.searchsorted(caption_item, np.arange(len(split.ids)))
        self.num_captions = np.bincount(caption_item, minlength=len(split.ids))
        self.features = None
        if not model.config.vision.trainable:
            self.features = features if features is not None else slow_features(
                model, split.pixels, cfg.encode_batch_size, progress)

    def steps_per_epoch(self) -> int:
        return max(1, len(self.split.ids) // self.cfg.batch_size)

    def epoch(self, rng: np.random.Generator):
        order = rng.permutation(len(self.split.ids))
        b = self.cfg.batch_size
        for step in range(self.steps_per_epoch()):
            items = order[step * b : (step + 1) * b]
            captions = self.first_caption[items] + rng.integers(0, self.num_captions[items])
            visual = self.features[torch.from_numpy(items)] if self.features is not None else \
                torch.from_numpy(self.split.pixels[items])
            texts = [self.texts[i] for i in captions]
            yield Batch(items=items, captions=captions, visual=visual, text=texts, texts=texts)


def slow_loss(model: SlowModel, batch: Batch) -> tuple[torch.Tensor, dict]:
    """The captioning loss of one batch (visual: cached tower features, or uint8 pixels for a trainable tower)."""
    feats = model.visual_features(batch.visual) if batch.visual.dtype == torch.uint8 else batch.visual
    loss = model.loss(model.visual_tokens(feats), batch.texts)
    return loss, {"loss": loss.item()}


def train_slow(model: SlowModel, split: LoadedSplit, cfg: SlowTrainConfig, progress: bool = True,
               features: torch.Tensor | None = None, batches: SlowBatches | None = None, **loop) -> list[dict]:
    """Train the captioner: each epoch every item once with one random caption. Returns the per-step history.

    `loop` passes resume / steps_per_epoch / on_step through to `fastslow.loop.fit`.
    """
    if model.config.output_vocab is None and model.tokenizer.vocab_size > 1000:
        log.warning("slow: no output_vocab, predicting over all %d tokenizer ids (slow); see make_slow_model",
                    model.tokenizer.vocab_size)
    batches = batches or SlowBatches(model, split, cfg, progress, features)
    return fit(model, batches, cfg, slow_loss, progress, desc="training slow", **loop)


MAX_CACHED_ITEMS = 2048  # distinct items whose keys/values are held at once while scoring


@torch.inference_mode()
def slow_score_matrix(model: SlowModel, features: torch.Tensor, texts: list[str], candidates: torch.Tensor,
                      batch_pairs: int = 512, progress: bool = False) -> np.ndarray:
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
                out[r0 + rs.start : r0 + rs.stop, cs] = scores.float().cpu().numpy()  # float: bf16 under autocast
                bar.update(scores.numel())
        else:
            out[r0 : r0 + len(block)] = _grouped_block(model, kv, local, block_texts, batch_pairs, bar)
    bar.close()
    return out


MAX_GROUP = 16  # texts sharing one item's keys/values in a pass


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


def evaluate_slow(model: SlowModel, split: LoadedSplit, max_items: int = 300, progress: bool = False) -> RetrievalResult:
    """Slow over a whole gallery: each item's first caption against every item (the first `max_items` items).

    Slow costs one decoder pass per (caption, item) pair, so the gallery is capped; the
    result says how many items and queries it covered.
    """
    n = min(len(split.ids), max_items)
    if n == 0:
        raise FastslowError("evaluate_slow: the split has no items")
    texts, caption_item = split.caption_pairs()
    first = np.searchsorted(caption_item, np.arange(n))
    features = slow_features(model, split.pixels[:n], progress=progress)
    t0 = time.perf_counter()
    scores = slow_score_matrix(model, features, [texts[i] for i in first], torch.arange(n).expand(n, n),
                               progress=progress)
    ms = 1000.0 * (time.perf_counter() - t0) / n
    ranks = ranks_of_true(scores, np.arange(n))
    return RetrievalResult(metrics=metrics_from_ranks(ranks), ms_per_query=ms, num_queries=n, gallery_size=n)
