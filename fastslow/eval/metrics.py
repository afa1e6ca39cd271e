"""Text-to-visual retrieval metrics: R@1, R@5, R@10 and median rank, ties counted against the query."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

RECALL_AT = (1, 5, 10)


def ranks_of_true(scores: np.ndarray | torch.Tensor, true_index: np.ndarray) -> np.ndarray:
    """1-based rank of each query's true item: the number of gallery items scoring at least as high.

    Counting ties against the query keeps a model that gives near-identical
    captions identical scores from being credited with a hit.
    """
    s = torch.as_tensor(scores, dtype=torch.float64)
    idx = torch.as_tensor(true_index, dtype=torch.long)
    true_scores = s.gather(1, idx[:, None])
    return (s >= true_scores).sum(dim=1).numpy()


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """Recall at 1/5/10 in percent, median and mean rank."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no queries to evaluate")
    out = {f"r{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_AT}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(np.mean(ranks))
    return out


def chance_metrics(gallery_size: int) -> dict[str, float]:
    """What a random ranking scores on a gallery of this size."""
    out = {f"r{k}": 100.0 * min(k, gallery_size) / gallery_size for k in RECALL_AT}
    out["median_rank"] = (gallery_size + 1) / 2
    return out


@dataclass
class RetrievalResult:
    """Metrics of one method on one split, with the time spent per query."""

    metrics: dict[str, float]
    ms_per_query: float
    num_queries: int
    gallery_size: int


@torch.no_grad()
def evaluate_embeddings(text_emb: torch.Tensor, visual_emb: torch.Tensor, true_index: np.ndarray) -> RetrievalResult:
    """Rank the whole gallery for every query by dot product; time the search part per query."""
    start = time.perf_counter()
    scores = text_emb.double() @ visual_emb.double().T
    elapsed = time.perf_counter() - start
    ranks = ranks_of_true(scores, true_index)
    return RetrievalResult(
        metrics=metrics_from_ranks(ranks),
        ms_per_query=1000.0 * elapsed / len(true_index),
        num_queries=len(true_index),
        gallery_size=visual_emb.shape[0],
    )
