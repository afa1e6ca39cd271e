"""Sharded FAISS: the merge of S shards equals one index over all vectors; per-call search parameters."""

import numpy as np
import pytest

from fastslow.errors import FastslowError
from fastslow.index.shards import IndexSpec, build_shards, search_params, shard_of
from helpers import search_all


def _data(n=600, d=16, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = [f"item-{i:05d}" for i in rng.permutation(n)]
    return ids, v, rng.normal(size=(40, d)).astype(np.float32)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_sharded_flat_search_equals_one_flat_index(metric):
    ids, vectors, queries = _data()
    one, one_rows = build_shards(ids, vectors, IndexSpec(metric=metric, shards=1))
    four, four_rows = build_shards(ids, vectors, IndexSpec(metric=metric, shards=4))
    assert sum(ix.ntotal for ix in four) == len(ids) and all(ix.ntotal > 0 for ix in four)
    assert sorted(np.concatenate(four_rows).tolist()) == list(range(len(ids)))  # every item once
    s1, r1 = search_all(one, one_rows, queries, 10, metric)
    s4, r4 = search_all(four, four_rows, queries, 10, metric)
    mismatches = (r1 != r4).mean()
    assert mismatches < 0.01, mismatches
    np.testing.assert_allclose(s1, s4, rtol=1e-5, atol=1e-5)
    # The exact neighbours, checked by brute force.
    brute = queries @ vectors.T if metric == "ip" else -((queries[:, None] - vectors[None]) ** 2).sum(-1)
    assert (np.argsort(-brute, axis=1)[:, :10] == r1).mean() > 0.99


def test_shards_are_stable_and_independent_of_input_order():
    ids, vectors, queries = _data()
    perm = np.random.default_rng(1).permutation(len(ids))
    a_ix, a_rows = build_shards(ids, vectors, IndexSpec(shards=3))
    b_ix, b_rows = build_shards([ids[i] for i in perm], vectors[perm], IndexSpec(shards=3))
    for s in range(3):
        assert [ids[r] for r in a_rows[s]] == [ids[perm[r]] for r in b_rows[s]]
    assert shard_of("item-00001", 3) == shard_of("item-00001", 3)


def test_ivf_trains_once_and_nprobe_is_per_call():
    ids, vectors, queries = _data(n=2000)
    spec = IndexSpec(factory="IVF16,Flat", shards=2, train_sample=1000)
    indexes, rows = build_shards(ids, vectors, spec)
    params = search_params(indexes[0], nprobe=16)
    assert params is not None and indexes[0].nprobe == 1  # the index itself is untouched
    exact, exact_rows = build_shards(ids, vectors, IndexSpec(shards=1))
    _, r_all = search_all(indexes, rows, queries, 5, "ip", nprobe=16)  # every list probed: exact
    _, r_exact = search_all(exact, exact_rows, queries, 5, "ip")
    assert (r_all == r_exact).mean() > 0.99
    _, r_one = search_all(indexes, rows, queries, 5, "ip", nprobe=1)
    assert (r_one == r_exact).mean() < (r_all == r_exact).mean()
    assert indexes[0].nprobe == 1


def test_hnsw_and_pq_factories_build_and_search():
    ids, vectors, queries = _data(n=1200)
    for factory, kwargs in (("HNSW16", {"ef_search": 64}), ("IVF8,PQ4", {"nprobe": 8})):
        indexes, rows = build_shards(ids, vectors, IndexSpec(factory=factory, shards=2))
        scores, found = search_all(indexes, rows, queries, 5, "ip", **kwargs)
        assert found.shape == (40, 5) and (found >= 0).all()


def test_bad_specs_are_clear_errors():
    ids, vectors, _ = _data(n=50)
    with pytest.raises(FastslowError, match="index.factory 'Nonsense42'"):
        build_shards(ids, vectors, IndexSpec(factory="Nonsense42"))
    with pytest.raises(FastslowError, match="index.metric"):
        IndexSpec(metric="cosine")
    with pytest.raises(FastslowError, match="not unique"):
        build_shards(["a", "a"], vectors[:2], IndexSpec())
