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
    np.testing.assert_array_equal(r1, r4)  # exact: the merge of exact shards is the exact answer
    np.testing.assert_allclose(s1, s4, rtol=1e-5, atol=1e-5)
    # The exact neighbours, checked by brute force.
    brute = queries @ vectors.T if metric == "ip" else -((queries[:, None] - vectors[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.argsort(-brute, axis=1, kind="stable")[:, :10], r1)


def test_ties_across_shards_go_by_row_as_in_one_index():
    """Many equal vectors, so the k-th place is a tie that spans shards: both searches order it by row."""
    ids, vectors, queries = _data(n=300)
    vectors[::3] = vectors[0]  # 100 copies of one vector
    queries[:5] = vectors[0]
    one, one_rows = build_shards(ids, vectors, IndexSpec(shards=1))
    four, four_rows = build_shards(ids, vectors, IndexSpec(shards=4))
    r1, r4 = search_all(one, one_rows, queries, 10, "ip")[1], search_all(four, four_rows, queries, 10, "ip")[1]
    np.testing.assert_array_equal(r1, r4)
    assert r1[0].tolist() == list(range(0, 30, 3))  # the tied copies, lowest rows first


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


def _recall_at_10(found: np.ndarray, queries: np.ndarray, vectors: np.ndarray) -> float:
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


# One factory per family FAISS builds: plain IVF and HNSW, IVF-PQ, and IVF wrapped in a transform (OPQ, PCA), a
# refinement (RFlat), an id map, and an IVF whose coarse quantizer is itself an HNSW (its efSearch is passed too).
FAMILIES = [("IVF32,Flat", "nprobe", 1, 32), ("HNSW8", "ef_search", 1, 128), ("IVF32,PQ8x4", "nprobe", 1, 32),
            ("OPQ8,IVF32,PQ8x4", "nprobe", 1, 32), ("PCA16,IVF32,Flat", "nprobe", 1, 32),
            ("IVF32,PQ8x4,RFlat", "nprobe", 1, 32), ("IDMap,HNSW8", "ef_search", 1, 128),
            ("IVF32_HNSW8,Flat", "nprobe", 1, 32)]


@pytest.mark.parametrize("factory,knob,low,high", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_recall_rises_with_the_search_parameter_for_every_factory_family(factory, knob, low, high):
    # Vectors near a 12-dimensional subspace of 32 dimensions, so PCA16 keeps what ranks them.
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(12, 32))
    vectors, queries = (rng.normal(size=(n, 12)) @ basis + 0.05 * rng.normal(size=(n, 32)) for n in (3000, 40))
    vectors, queries = (x.astype(np.float32) / np.linalg.norm(x, axis=1, keepdims=True) for x in (vectors, queries))
    ids = [f"item-{i:05d}" for i in range(len(vectors))]
    indexes, rows = build_shards(ids, vectors, IndexSpec(factory=factory, shards=2, train_sample=3000))
    recall = {v: _recall_at_10(search_all(indexes, rows, queries, 10, "ip", **{knob: v})[1], queries, vectors)
              for v in (low, high)}
    # nprobe 1 of 32 lists (or efSearch 1) misses many neighbours; every list (or a wide beam) finds them, up to
    # what PQ's coarse codes can tell apart. A parameter that did not reach the index would leave recall as it was.
    assert recall[high] > recall[low] + 0.1, recall
    assert recall[high] > (0.5 if "PQ" in factory else 0.95), recall


def test_a_factory_whose_search_settings_cannot_be_set_per_call_is_refused():
    ids, vectors, _ = _data(n=400)
    with pytest.raises(FastslowError, match="index.factory 'NSG16,Flat'.*per call"):
        build_shards(ids, vectors, IndexSpec(factory="NSG16,Flat"))


def test_bad_specs_are_clear_errors():
    ids, vectors, _ = _data(n=50)
    with pytest.raises(FastslowError, match="index.factory 'Nonsense42'"):
        build_shards(ids, vectors, IndexSpec(factory="Nonsense42"))
    with pytest.raises(FastslowError, match="index.metric"):
        IndexSpec(metric="cosine")
    with pytest.raises(FastslowError, match="not unique"):
        build_shards(["a", "a"], vectors[:2], IndexSpec())
