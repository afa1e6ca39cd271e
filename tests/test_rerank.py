"""Re-ranking: the Slow order of Fast's candidates, both scores kept, ranks for evaluation."""

import numpy as np
import torch

from fastslow.eval import ranks_of_true
from fastslow.rerank import fast_topk, rerank, reranked_ranks


def test_fast_topk_is_exact():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [-1.0, 0.0]])
    scores, idx = fast_topk(q, g, 3)
    assert idx.tolist() == [[0, 2, 1], [1, 2, 0]]
    assert scores.dtype == np.float64 and np.all(np.diff(scores, axis=1) <= 0)


def test_rerank_returns_the_slow_order_of_the_candidates():
    candidates = np.array([[7, 3, 5, 1]])
    fast = np.array([[0.9, 0.8, 0.7, 0.6]])
    slow = np.array([[-12.0, -3.0, -20.0, -5.0]])
    out = rerank(candidates, fast, slow, top_k=3)
    assert out.indices.tolist() == [[3, 1, 7]]
    assert out.slow_scores.tolist() == [[-3.0, -5.0, -12.0]]
    assert out.fast_scores.tolist() == [[0.8, 0.6, 0.9]]


def test_fusion_weight_brings_fast_back():
    candidates = np.array([[0, 1]])
    fast, slow = np.array([[1.0, 0.0]]), np.array([[-1.0, -0.5]])
    assert rerank(candidates, fast, slow).indices.tolist() == [[1, 0]]
    assert rerank(candidates, fast, slow, fast_weight=10.0).indices.tolist() == [[0, 1]]


def test_reranked_ranks_inside_and_outside_the_top_k():
    fast_all = np.array([[0.9, 0.8, 0.7, 0.1], [0.9, 0.8, 0.7, 0.1]])
    candidates = np.array([[0, 1, 2], [0, 1, 2]])
    final = np.array([[-5.0, -1.0, -9.0], [-5.0, -1.0, -9.0]])
    # Query 0's true item (1) is promoted to rank 1; query 1's (3) was never retrieved: rank 4 as in Fast.
    assert reranked_ranks(ranks_of_true(fast_all, np.array([1, 3])), np.array([1, 3]), candidates, final).tolist() == [1, 4]
    # A tie with another candidate counts against the query.
    tie = np.array([[-1.0, -1.0, -9.0], [-1.0, -1.0, -9.0]])
    assert reranked_ranks(ranks_of_true(fast_all, np.array([1, 1])), np.array([1, 1]), candidates, tie).tolist() == [2, 2]
