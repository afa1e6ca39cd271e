"""Retrieval evaluation of checkpoints on a split: Fast, Slow over a gallery, and Fast then Slow re-ranking."""

from __future__ import annotations

import time

import numpy as np
import torch

from fastslow.data.decode import decode_geometry
from fastslow.data.loaded import LoadedSplit
from fastslow.data.source import DataConfig, load_data_split
from fastslow.errors import FastslowError
from fastslow.eval.metrics import (RetrievalResult, chance_metrics, evaluate_embeddings, metrics_from_ranks,
                                   ranks_of_true)
from fastslow.inference.fast_embeddings import FastRetrieval, embed_split
from fastslow.inference.slow_scores import load_slow, slow_features, slow_score_matrix
from fastslow.models.checkpoint import load_model
from fastslow.models.fast import FastEncoder
from fastslow.models.slow import SlowModel
from fastslow.rerank import fast_topk, fuse_scores, reranked_ranks


def evaluate_fast(model, split: LoadedSplit, batch_size: int = 64, progress: bool = False) -> RetrievalResult:
    """Text-to-visual retrieval of the Fast model over a split.

    The time per query counts what a query costs at serving time: encoding the
    text and scoring the gallery.
    """
    embedded = embed_split(model, split, batch_size, progress)
    result = evaluate_embeddings(embedded.queries, embedded.gallery, embedded.true_index)
    result.ms_per_query += embedded.encode_ms_per_query
    return result



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



def result_summary(result: RetrievalResult, split: str | None) -> dict:
    """Metrics of one evaluation with chance beside them, as a JSON-friendly dict."""
    return {
        "split": split,
        **{k: round(v, 3) for k, v in result.metrics.items()},
        "ms_per_query": round(result.ms_per_query, 4),
        "queries": result.num_queries,
        "gallery": result.gallery_size,
        "chance": chance_metrics(result.gallery_size),
    }



def evaluate_reranked(fast: FastEncoder, slow: SlowModel, split: LoadedSplit, k: int, fast_weight: float = 0.0,
                      slow_pixels: np.ndarray | None = None, progress: bool = False) -> RetrievalResult:
    """Fast retrieves each caption's top k items of the split, Slow re-scores them; ms counts both per query."""
    emb = embed_split(fast, split, progress=progress)
    # Items' Slow features are computed offline, like the Fast gallery.
    features = slow_features(slow, split.pixels if slow_pixels is None else slow_pixels, progress=progress)
    fast_ranks = ranks_of_true(emb.queries.double() @ emb.gallery.double().T, emb.true_index)
    ranks, ms = rerank_embedded(emb, fast_ranks, slow, features, k, fast_weight, progress)
    return RetrievalResult(metrics=metrics_from_ranks(ranks), num_queries=len(emb.texts), gallery_size=len(split.ids),
                           ms_per_query=ms)



def rerank_embedded(emb: FastRetrieval, fast_ranks: np.ndarray, slow: SlowModel, features: torch.Tensor, k: int,
                    fast_weight: float = 0.0, progress: bool = False) -> tuple[np.ndarray, float]:
    """Ranks of the true items once Slow re-scores Fast's top k, and the ms per query (text encoding, top k, Slow)."""
    t0 = time.perf_counter()
    fast_scores, candidates = fast_topk(emb.queries, emb.gallery, k)
    slow_scores = slow_score_matrix(slow, features, emb.texts, torch.from_numpy(candidates), progress=progress)
    seconds = time.perf_counter() - t0
    ranks = reranked_ranks(fast_ranks, emb.true_index, candidates, fuse_scores(fast_scores, slow_scores, fast_weight))
    return ranks, emb.encode_ms_per_query + 1000.0 * seconds / len(emb.texts)



def run_eval(checkpoint: str, data: DataConfig, split: str | None, progress: bool = True, rerank: str | None = None,
             k: int = 20, fast_weight: float = 0.0) -> dict:
    """Evaluate a saved Fast checkpoint on one split; with `rerank` (a Slow checkpoint), Fast top k then Slow."""
    model = load_model(checkpoint, FastEncoder)
    size, fit = decode_geometry(model.config.vision)
    loaded = load_data_split(data, split, size, progress, fit)
    if rerank is None:
        return result_summary(evaluate_fast(model, loaded, progress=progress), split)
    if k < 1:
        raise FastslowError(f"--k {k}: the number of candidates to re-rank must be at least 1")
    slow = load_slow(rerank)
    slow_pixels = None
    slow_size, slow_fit = decode_geometry(slow.config.vision)
    if (slow_size, slow_fit) != (size, fit):  # Slow sees the items at its own size and fit (BLIP: squashed)
        slow_pixels = load_data_split(data, split, slow_size, progress, slow_fit).pixels
    result = evaluate_reranked(model, slow, loaded, k, fast_weight, slow_pixels, progress)
    return {**result_summary(result, split), "rerank": rerank, "k": k, "fast_weight": fast_weight}

