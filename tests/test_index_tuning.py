"""The search setting chosen at build time (fastslow.index.tuning) and the factory chosen by size: the recorded
nprobe/efSearch is the smallest that reaches the target recall, reaches it on queries the build never saw, and is
what a shard replica searches with unless told otherwise."""

import numpy as np
import pyarrow as pa
import pytest

from fastslow.errors import FastslowError
from fastslow.index.build import store_version
from fastslow.index.publish import publish, read_manifest
from fastslow.index.shards import EXACT_BELOW, IndexSpec, build_shards, resolve_factory, search_params
from fastslow.index.tuning import choose_search_setting, choose_setting, query_rows, shard_part
from fastslow.search.shard import ShardSearcher
from helpers import search_all

N, HELD_OUT, DIM = 4000, 300, 32


@pytest.fixture(scope="module")
def clustered():
    """N + HELD_OUT unit vectors in 64 loose groups (hard enough that nprobe 1 or efSearch 16 miss neighbours), the
    last HELD_OUT not indexed: (ids, indexed vectors, held-out queries)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, DIM))
    x = centres[rng.integers(0, 64, N + HELD_OUT)] + 1.5 * rng.normal(size=(N + HELD_OUT, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return [f"item-{i:05d}" for i in range(N)], x[:N], x[N:]


def _held_out_recall(indexes, rows, vectors, queries, **setting) -> float:
    """recall@10 of queries that are not in the index, against brute force."""
    _, found = search_all(indexes, rows, queries, 10, "ip", **setting)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]))


@pytest.mark.parametrize("factory,name", [("IVF64,Flat", "nprobe"), ("HNSW8", "ef_search")])
def test_the_recorded_setting_is_the_smallest_reaching_the_target_and_holds_on_held_out_queries(clustered, factory,
                                                                                                name):
    ids, vectors, held_out = clustered
    spec = IndexSpec(factory=factory, shards=2, train_sample=N, target_recall=0.95, tune_queries=500)
    indexes, rows = build_shards(ids, vectors, spec)
    chosen = choose_search_setting(indexes, rows, vectors, spec)
    value = chosen[name]
    assert chosen["recall_at_10"] >= 0.95 and chosen["queries"] == 500 and chosen["target_recall"] == 0.95
    # The smallest: the value before it on the ladder (half) misses the target on the same queries.
    assert value > (1 if name == "nprobe" else 16), chosen  # the target is out of reach of the cheapest setting
    queries = query_rows(N, spec)
    parts = [shard_part(ix, r, vectors[r], vectors[queries], "ip", 10) for ix, r in zip(indexes, rows)]
    below = choose_setting(parts, queries, "ip", spec, name, [value // 2])["recall_at_10"]
    assert below < 0.95, (value, below)
    # Queries the build never saw (not in the index) get the target recall too, within sampling error.
    assert _held_out_recall(indexes, rows, vectors, held_out, **{name: value}) >= 0.93


def test_an_exact_index_records_its_recall_and_no_setting(clustered):
    ids, vectors, _ = clustered
    spec = IndexSpec(factory="Flat", shards=3, tune_queries=200)
    indexes, rows = build_shards(ids, vectors, spec)
    assert choose_search_setting(indexes, rows, vectors, spec) == {"target_recall": 0.95, "queries": 200,
                                                                   "recall_at_10": 1.0}
    assert choose_search_setting(indexes, rows, vectors, IndexSpec(target_recall=0)) == {}  # not measured


def test_a_replica_searches_with_the_recorded_setting_unless_told_otherwise(clustered, tmp_path):
    ids, vectors, _ = clustered
    root = str(tmp_path / "index")
    meta = pa.table({"id": ids, "uri": [f"/m/{i}.png" for i in ids], "media": ["image"] * N})
    spec = IndexSpec(factory="IVF64,Flat", shards=2, train_sample=N, tune_queries=300)
    store_version(root, "v1", ids, vectors, meta, spec, {"weights_sha256": "x", "num_frames": 4})
    publish(root, "v1")
    recorded = read_manifest(root, "v1")["search"]
    assert recorded["nprobe"] > 1 and recorded["recall_at_10"] >= 0.95
    assert ShardSearcher(root, 0).params.nprobe == recorded["nprobe"]
    assert ShardSearcher(root, 1, nprobe=3).params.nprobe == 3  # the app's override wins


def test_auto_is_exact_for_small_collections_and_an_inverted_file_for_large_ones():
    assert resolve_factory("auto", EXACT_BELOW - 1, 100_000) == "Flat"
    assert resolve_factory("auto", 250_000, 100_000) == "IVF2048,Flat"  # 4·sqrt(N) = 2000
    assert resolve_factory("auto", 1_000_000, 100_000) == "IVF2048,Flat"  # 4096 lists would need 160k to train
    assert resolve_factory("auto", 1_000_000, 200_000) == "IVF4096,Flat"
    assert resolve_factory("HNSW32", 10, 100_000) == "HNSW32"  # a given factory is kept


def test_the_default_factory_is_auto_and_the_manifest_names_what_it_became(tmp_path):
    import faiss

    ids = [f"i{k:02d}" for k in range(50)]
    vectors = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    meta = pa.table({"id": ids})
    assert IndexSpec().factory == "auto"
    store_version(str(tmp_path), "v1", ids, vectors, meta, IndexSpec(), {"weights_sha256": "x"})
    manifest = read_manifest(str(tmp_path), "v1")
    assert manifest["factory"] == "Flat" and manifest["search"]["recall_at_10"] == 1.0
    indexes, _ = build_shards(ids, vectors, IndexSpec())
    assert isinstance(faiss.downcast_index(indexes[0]), faiss.IndexFlat)


def test_bad_tuning_settings_are_clear_errors():
    with pytest.raises(FastslowError, match="index.target_recall"):
        IndexSpec(target_recall=1.5)
    with pytest.raises(FastslowError, match="index.tune_queries"):
        IndexSpec(tune_queries=0)
