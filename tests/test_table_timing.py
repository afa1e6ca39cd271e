"""The benchmark table's timings (benchmarks/table_timing.py): each method's timed answer is that method's result,
and every method is timed by the same rules (one query at a time, then the same batches)."""

import time

import numpy as np
import pytest
import torch

from benchmarks.table_spec import table_spec
from benchmarks.table_timing import (TimingConfig, add_timings, fast_answer, rerank_answer, slow_answer, spread,
                                     timing_summary)
from fastslow.errors import FastslowError
from fastslow.inference.fast_embeddings import visual_features
from fastslow.inference.slow_scores import slow_features
from fastslow.models.fast import FastModel
from fastslow.train.slow_training import make_slow_model

COLOURS, SHAPES = ("red", "blue", "green", "yellow"), ("circle", "square", "star")
TEXTS = [f"a {c} {s} left of a {d} {t}" for c in COLOURS for s in SHAPES for d, t in (("purple", "cross"),)][:10]


@pytest.fixture(scope="module")
def tiny():
    """The tiny table's untrained Fast and Slow, with 12 random images embedded and featurised beforehand."""
    spec = table_spec("tiny")
    torch.manual_seed(0)
    fast = FastModel(spec.image.fast).eval()
    slow = make_slow_model(spec.image.slow, TEXTS).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        gallery = fast.embed_visual_features(visual_features(fast, pixels, 64))
    return fast, gallery, slow, slow_features(slow, pixels)


def test_each_timed_answer_is_its_methods_ranking(tiny):
    fast, gallery, slow, features = tiny
    n = len(gallery)
    fast_top, slow_top = fast_answer(fast, gallery)(TEXTS), slow_answer(slow, features)(TEXTS)
    with torch.no_grad():
        scores = fast.encode_text(TEXTS).double() @ gallery.double().T
    assert (fast_top == np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :10]).all()
    # Fast's whole gallery re-ranked by Slow is Slow over all; its top 1 re-ranked is Fast's first.
    assert (rerank_answer(fast, gallery, slow, features, n)(TEXTS) == slow_top).all()
    assert (rerank_answer(fast, gallery, slow, features, 1)(TEXTS)[:, 0] == fast_top[:, 0]).all()
    assert len({tuple(row) for row in slow_top}) > 1  # Slow ranks the texts differently: a real ranking
    # A batch answers each query as it would be answered alone.
    for answer in (fast_answer(fast, gallery), slow_answer(slow, features),
                   rerank_answer(fast, gallery, slow, features, 5)):
        assert (np.vstack([answer([t]) for t in TEXTS]) == answer(TEXTS)).all()


def recorder(seconds_per_call: float, seconds_per_query: float):
    """An answer that sleeps a fixed time per call and per query, recording the batches it was given."""
    calls = []

    def answer(texts):
        calls.append(list(texts))
        time.sleep(seconds_per_call + seconds_per_query * len(texts))
        return np.zeros((len(texts), 1), dtype=int)
    return answer, calls


def test_every_method_is_timed_alike():
    texts = [f"query {i}" for i in range(12)]
    cfg = TimingConfig(latency_queries=5, throughput_queries=10, batch=4, repeats=2)
    slow, slow_calls = recorder(0.0, 0.02)  # Slow over all: costs per query
    reranked, reranked_calls = recorder(0.01, 0.002)  # a shortlist: a fixed cost per call, little per query
    slow_row, reranked_row, fast_row = {"k": None}, {"k": 20}, {"k": None}
    fast, fast_calls = recorder(0.0, 0.0)
    add_timings([(slow_row, slow), (reranked_row, reranked), (fast_row, fast)], texts, cfg, slow_row)
    # One warm-up query, the latency sample one at a time, one warm-up batch, then the sample in batches, twice.
    latency_sample, batched = spread(texts, 5), spread(texts, 10)
    expected = ([texts[:1]] + [[t] for t in latency_sample] + [batched[:4]]
                + [batched[i : i + 4] for i in range(0, 10, 4)] * 2)
    assert slow_calls == reranked_calls == fast_calls == expected
    assert slow_row["latency_ms"] == pytest.approx(20, rel=0.5)
    assert slow_row["queries_per_s"] == pytest.approx(50, rel=0.5)
    # Batching amortises the shortlist's fixed cost: 3 batches of up to 4 queries, 10 ms each plus 2 ms a query.
    assert reranked_row["latency_ms"] == pytest.approx(12, rel=0.5)
    assert reranked_row["queries_per_s"] == pytest.approx(10 / (3 * 0.01 + 10 * 0.002), rel=0.5)
    assert reranked_row["speedup_latency"] == pytest.approx(slow_row["latency_ms"] / reranked_row["latency_ms"],
                                                            rel=0.01)
    assert reranked_row["speedup_throughput"] == pytest.approx(
        reranked_row["queries_per_s"] / slow_row["queries_per_s"], rel=0.01)
    assert "speedup_latency" not in fast_row and fast_row["queries_per_s"] > slow_row["queries_per_s"]
    assert timing_summary(cfg, texts, "cpu")["throughput_queries"] == 10


def test_the_timing_sample_is_spread_over_the_queries():
    texts = [str(i) for i in range(100)]
    assert spread(texts, 5) == ["0", "25", "50", "74", "99"]
    assert spread(texts[:3], 5) == ["0", "1", "2"]
    with pytest.raises(FastslowError, match="timing.repeats = 0: must be at least 1"):
        TimingConfig(repeats=0)
