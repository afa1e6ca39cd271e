"""Fast then Slow: Fast retrieves the top K, Slow re-scores those K, the final order comes from Slow.

Ray-free; the Serve re-ranker and the benchmark table call the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Reranked:
    """The final top k of each query with both scores: indices into the gallery, best first."""

    indices: np.ndarray  # (Q, k) gallery indices
    fast_scores: np.ndarray  # (Q, k)
    slow_scores: np.ndarray  # (Q, k)
    final_scores: np.ndarray  # (Q, k) what the order follows


def fast_topk(query_emb: torch.Tensor, gallery_emb: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k by dot product: (scores (Q, k) float64, indices (Q, k)), best first."""
    scores = query_emb.double() @ gallery_emb.double().T
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return top.values.numpy(), top.indices.numpy()


def fuse_scores(fast: np.ndarray, slow: np.ndarray, fast_weight: float = 0.0) -> np.ndarray:
    """The score the final order follows: the Slow score, plus `fast_weight` times the Fast score.

    Slow scores are caption log-likelihoods (in nats) and Fast scores cosines, so a
    weight of a few tens is needed for Fast to matter; 0 keeps the pure Slow order.
    """
    return np.asarray(slow, dtype=np.float64) + fast_weight * np.asarray(fast, dtype=np.float64)


def rerank(candidates: np.ndarray, fast_scores: np.ndarray, slow_scores: np.ndarray, top_k: int | None = None,
           fast_weight: float = 0.0) -> Reranked:
    """Order each query's K candidates by the fused score and keep the first `top_k`.

    Ties keep Fast's order (the candidates come in Fast order and the sort is stable).
    """
    final = fuse_scores(fast_scores, slow_scores, fast_weight)
    order = np.argsort(-final, axis=1, kind="stable")[:, : top_k or final.shape[1]]
    take = lambda a: np.take_along_axis(np.asarray(a), order, axis=1)  # noqa: E731
    return Reranked(indices=take(candidates), fast_scores=take(fast_scores), slow_scores=take(slow_scores),
                    final_scores=take(final))


def reranked_ranks(fast_ranks: np.ndarray, true_index: np.ndarray, candidates: np.ndarray,
                   final_scores: np.ndarray) -> np.ndarray:
    """1-based rank of each query's true item after re-ranking Fast's top K, ties against the query.

    `fast_ranks` are the true items' ranks under Fast (`fastslow.eval.ranks_of_true`).
    A true item inside the top K is ranked among the K by the final score; one
    outside keeps its Fast rank (the K re-ranked items come first either way).
    """
    k = candidates.shape[1]
    ranks = np.asarray(fast_ranks).copy()
    for q, true in enumerate(true_index):
        hit = np.nonzero(candidates[q] == true)[0]
        if hit.size and fast_ranks[q] <= k:
            ranks[q] = int((final_scores[q] >= final_scores[q, hit[0]]).sum())
        else:
            ranks[q] = max(fast_ranks[q], k + 1)
    return ranks
