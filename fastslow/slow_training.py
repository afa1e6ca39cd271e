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
from fastslow.models.slow import SlowConfig, SlowModel, build_output_vocab
from fastslow.training import warmup_cosine

log = get_logger(__name__)


@dataclass
class SlowTrainConfig:
    """Optimisation settings of the Slow model."""

    epochs: int = 10  # the synthetic benchmark: 10 for its 4,000 images, 25 for its 1,200 videos
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


def train_slow(model: SlowModel, split: LoadedSplit, cfg: SlowTrainConfig, progress: bool = True,
               features: torch.Tensor | None = None) -> list[dict]:
    """Train the captioner: each epoch every item once with one random caption. Returns the per-step history."""
    if len(split.ids) == 0:
        raise FastslowError("train_slow: the training split has no items")
    if model.config.output_vocab is None and model.tokenizer.vocab_size > 1000:
        log.warning("slow: no output_vocab, predicting over all %d tokenizer ids (slow); see make_slow_model",
                    model.tokenizer.vocab_size)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    texts, caption_item = split.caption_pairs()
    first_caption = np.searchsorted(caption_item, np.arange(len(split.ids)))
    num_captions = np.bincount(caption_item, minlength=len(split.ids))
    trainable_tower = model.config.vision.trainable
    if features is None and not trainable_tower:
        features = slow_features(model, split.pixels, cfg.encode_batch_size, progress)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(split.ids) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, cfg.warmup_steps))
    model.train()
    history, step = [], 0
    bar = tqdm(total=total, desc="training slow", disable=not progress)
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(split.ids))
        for start in range(0, steps_per_epoch * cfg.batch_size, cfg.batch_size):
            t0 = time.perf_counter()
            items = order[start : start + cfg.batch_size]
            captions = first_caption[items] + rng.integers(0, num_captions[items])
            if trainable_tower:
                feats = model.visual_features(torch.from_numpy(split.pixels[items]))
            else:
                feats = features[torch.from_numpy(items)]
            loss = model.loss(model.visual_tokens(feats), [texts[i] for i in captions])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            record = {"step": step, "epoch": epoch, "loss": loss.item(),
                      "samples_per_s": len(items) / (time.perf_counter() - t0)}
            history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
    bar.close()
    model.eval()
    return history


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
        # Rows with the same candidates (Slow over a gallery) score as a grid: keys/values shared, not gathered.
        grid = bool((block == block[:1]).all())
        for rs, cs in _chunks(block.shape[0], k, batch_pairs, whole_rows=not grid):
            row_texts = [texts[r0 + i] for i in range(rs.start, rs.stop)]
            if grid:
                scores = model.grid_scores(kv, _as_slice(local[0, cs]), row_texts)
            else:
                text_of_pair = torch.arange(len(row_texts), device=model.device).repeat_interleave(k)
                scores = model.pair_scores(kv, local[rs].flatten().to(model.device), row_texts, text_of_pair)
            out[r0 + rs.start : r0 + rs.stop, cs] = scores.reshape(len(row_texts), -1).cpu().numpy()
            bar.update(scores.numel())
    bar.close()
    return out


def _chunks(rows: int, k: int, batch_pairs: int, whole_rows: bool):
    """(row slice, column slice) chunks of about batch_pairs pairs: whole rows, or (unless whole_rows) row parts."""
    if k >= batch_pairs and not whole_rows:
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
