"""Retrieval metrics: ranks with ties counted against the query, recalls, median rank."""

import numpy as np
import pytest
import torch

from fastslow.eval import chance_metrics, evaluate_embeddings, metrics_from_ranks, ranks_of_true


def test_rank_counts_items_scoring_at_least_as_high():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.4, 0.4, 0.1]])
    ranks = ranks_of_true(scores, np.array([0, 1, 1]))
    # query 2's true item ties with item 0: the tie counts against it.
    assert ranks.tolist() == [1, 2, 2]


def test_exact_tie_is_not_a_hit():
    scores = np.ones((1, 4))
    assert ranks_of_true(scores, np.array([2])).tolist() == [4]
    assert metrics_from_ranks(ranks_of_true(scores, np.array([2])))["r1"] == 0.0


def test_metrics_from_ranks():
    m = metrics_from_ranks(np.array([1, 1, 3, 7, 20]))
    assert m["r1"] == pytest.approx(40.0)
    assert m["r5"] == pytest.approx(60.0)
    assert m["r10"] == pytest.approx(80.0)
    assert m["median_rank"] == 3.0


def test_chance():
    c = chance_metrics(500)
    assert c["r1"] == pytest.approx(0.2) and c["r10"] == pytest.approx(2.0) and c["median_rank"] == 250.5


def test_evaluate_embeddings_perfect_and_reversed():
    emb = torch.eye(6)
    perfect = evaluate_embeddings(emb, emb, np.arange(6))
    assert perfect.metrics["r1"] == 100.0 and perfect.metrics["median_rank"] == 1.0
    worst = evaluate_embeddings(-emb, emb, np.arange(6))
    assert worst.metrics["r1"] == 0.0 and worst.gallery_size == 6 and worst.num_queries == 6
