"""Adding and deleting items without a rebuild, compaction and garbage collection (fastslow.index.changes), in
process: append, then delete, then compact give the answers of a fresh build of the final items. Through the app
and the job: tests/test_serve_index_changes.py."""

import numpy as np
import pyarrow as pa
import pytest

from fastslow.errors import FastslowError
from fastslow.index import changes
from fastslow.index.publish import current_version, load_version, publish, read_manifest, write_version
from fastslow.index.shards import IndexSpec, build_shards
from fastslow.search.answer import merge_hits
from fastslow.search.shard import ShardSearcher

DIM = 16


def _items(start: int, stop: int, rng_seed: int = 0):
    rng = np.random.default_rng(rng_seed)
    vectors = rng.standard_normal((stop, DIM)).astype(np.float32)[start:]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"item-{i:05d}" for i in range(start, stop)]
    meta = pa.table({"id": ids, "uri": [f"/m/{i}.png" for i in ids], "media": ["image"] * len(ids),
                     "caption": [None] * len(ids), "width": pa.array([i % 50 for i in range(start, stop)], pa.int64())})
    return ids, vectors, meta


def _build(root: str, version: str, ids, vectors, meta, factory: str) -> None:
    spec = IndexSpec(factory=factory, shards=3, target_recall=0)
    indexes, rows = build_shards(ids, vectors, spec)
    write_version(root, version, indexes, rows, meta, spec, {"weights_sha256": "x"})
    publish(root, version)


def _answers(root: str, version: str, queries: np.ndarray, k: int, **setting) -> list[list[tuple[str, float]]]:
    shards = [ShardSearcher(root, s, version, **setting) for s in range(3)]
    per = [s.search(queries, k) for s in shards]
    return [[(h["id"], h["fast_score"]) for h in merge_hits([p[q] for p in per], k)] for q in range(len(queries))]


def _changed(root: str, factory: str, first: int, total: int, deleted: list[str]) -> tuple[str, str, str]:
    """Build items [0, first), append [first, total), delete `deleted`: (appended, deleted, compacted) versions."""
    ids, vectors, meta = _items(0, first)
    _build(root, "base", ids, vectors, meta, factory)
    new_ids, new_vectors, new_meta = _items(first, total)
    changes.append_version(root, "base", "appended", new_ids, new_vectors, new_meta)
    publish(root, "appended")
    after_delete = changes.delete_items(root, deleted, compact_at=1e9)["version"]
    compacted = changes.compact(root)["version"]
    return "appended", after_delete, compacted


@pytest.mark.parametrize("first", [900, 1000])
def test_append_delete_compact_answer_as_a_fresh_build_of_the_final_items(tmp_path, first):
    root, fresh_root = str(tmp_path / "index"), str(tmp_path / "fresh")
    deleted = ["item-00003", "item-00950", "item-01100", "item-00500"]
    versions = _changed(root, "Flat", first, 1200, deleted)
    ids, vectors, meta = _items(0, 1200)
    keep = [i for i, x in enumerate(ids) if x not in deleted]
    _build(fresh_root, "fresh", [ids[i] for i in keep], vectors[keep], meta.take(keep), "Flat")
    queries = np.random.default_rng(5).standard_normal((20, DIM)).astype(np.float32)
    want = _answers(fresh_root, "fresh", queries, 10)
    for version in versions[1:]:
        got = _answers(root, version, queries, 10)
        for g, w in zip(got, want):
            assert [i for i, _ in g] == [i for i, _ in w], version
            assert np.allclose([s for _, s in g], [s for _, s in w], atol=1e-6)
    # The appended version holds the deleted items still; the later ones do not, in search, like or media lookup.
    assert {"item-00003"} <= changes.live_ids(root, versions[0])
    for version in versions[1:]:
        held = changes.live_ids(root, version)
        assert held == {ids[i] for i in keep}
        shards = [ShardSearcher(root, s, version) for s in range(3)]
        assert all(s.vector("item-00950") is None and s.lookup("item-00950") is None for s in shards)
        assert sum(s.vector("item-01150") is not None for s in shards) == 1
        assert load_version(root, version).metadata.num_rows == len(keep)
        # The filterable fields are described over the items held: a deleted item counts in none of them.
        assert sum(s.describe_fields()["width"]["items"] for s in shards) == len(keep)
    # The appended and deleted versions share the base's shard files; compaction writes the changed shards anew.
    for version in versions[:2]:
        entries = read_manifest(root, version)["shards"]
        assert all(e["dir"] == "base" for e in entries) and all(e.get("delta") for e in entries)
    assert all(not e.get("delta") and not e.get("deleted") for e in read_manifest(root, versions[2])["shards"])
    assert current_version(root) == versions[2]


def test_on_an_ivf_index_the_changed_versions_recall_is_no_lower_than_a_fresh_builds(tmp_path):
    root, fresh_root = str(tmp_path / "index"), str(tmp_path / "fresh")
    deleted = [f"item-{i:05d}" for i in range(0, 3000, 97)]
    versions = _changed(root, "IVF16,Flat", 2400, 3000, deleted)
    ids, vectors, meta = _items(0, 3000)
    keep = [i for i, x in enumerate(ids) if x not in deleted]
    _build(fresh_root, "fresh", [ids[i] for i in keep], vectors[keep], meta.take(keep), "IVF16,Flat")
    queries = np.random.default_rng(6).standard_normal((50, DIM)).astype(np.float32)
    kept_vectors = vectors[keep]
    exact = [{ids[keep[j]] for j in np.argsort(-(kept_vectors @ q))[:10]} for q in queries]

    def recall(answers):
        return np.mean([len({i for i, _ in a} & e) / 10 for a, e in zip(answers, exact)])

    fresh = recall(_answers(fresh_root, "fresh", queries, 10, nprobe=2))
    # Before compaction the centroids are those trained on the first 2,400 items: about as good, not the same.
    before = recall(_answers(root, versions[1], queries, 10, nprobe=2))
    assert before >= fresh - 0.1, (before, fresh)
    # Compaction trains the index again as a fresh build does: the same answers.
    assert recall(_answers(root, versions[2], queries, 10, nprobe=2)) >= fresh
    assert _answers(root, versions[2], queries, 10, nprobe=2) == _answers(fresh_root, "fresh", queries, 10, nprobe=2)
    # It is the fresh build, file for file: the same index and the same rows in every shard.
    compacted, fresh_manifest = read_manifest(root, versions[2]), read_manifest(fresh_root, "fresh")
    for key in ("sha256", "rows_sha256", "count"):
        assert [e[key] for e in compacted["shards"]] == [e[key] for e in fresh_manifest["shards"]], key
    for version in versions[1:]:
        assert all(i not in deleted for a in _answers(root, version, queries, 10, nprobe=2) for i, _ in a)


def test_delete_reports_unknown_ids_and_refuses_when_none_is_held(tmp_path):
    root = str(tmp_path / "index")
    ids, vectors, meta = _items(0, 100)
    _build(root, "base", ids, vectors, meta, "Flat")
    summary = changes.delete_items(root, ["item-00001", "nope"])
    assert summary["deleted"] == 1 and summary["not_found"] == ["nope"] and current_version(root) == summary["version"]
    with pytest.raises(FastslowError, match="none of the 2 ids is in the live version"):
        changes.delete_items(root, ["nope", "item-00001"])
    assert changes.compact(root)["shards_rebuilt"] == 1  # the one shard holding item-00001
    assert changes.compact(root)["shards_rebuilt"] == 0  # nothing changed since


def test_garbage_collection_keeps_the_live_version_those_before_it_and_what_they_use(tmp_path):
    root = str(tmp_path / "index")
    ids, vectors, meta = _items(0, 60)
    _build(root, "v0", ids, vectors, meta, "Flat")
    made = ["v0"]
    for n in range(1, 5):
        more_ids, more_vectors, more_meta = _items(60 + 10 * (n - 1), 60 + 10 * n)
        changes.append_version(root, made[-1], f"v{n}", more_ids, more_vectors, more_meta)
        publish(root, f"v{n}")
        made.append(f"v{n}")
    _build(root, "w", *_items(0, 30), "Flat")  # a fresh build, live
    publish(root, "v4")  # back to v4 (a rollback): w is newer than the live one and stays
    removed = changes.collect_garbage(root, keep=1)
    # Kept: v4 (live), v3 (one before it), w (newer), and v0, whose shard files v3 and v4 use.
    assert sorted(removed) == ["v1", "v2"]
    for v in ("v0", "v3", "v4", "w"):
        read_manifest(root, v)
    assert load_version(root, "v4").metadata.num_rows == 100
    with pytest.raises(FastslowError, match="incomplete or missing version"):
        read_manifest(root, "v1")


def test_a_compacted_ivf_has_its_search_setting_measured_again_as_a_fresh_build_does(tmp_path):
    from fastslow.index.build import store_version

    root, fresh_root = str(tmp_path / "index"), str(tmp_path / "fresh")
    spec = IndexSpec(factory="IVF16,Flat", shards=2, target_recall=0.95, tune_queries=200)
    ids, vectors, meta = _items(0, 2400)
    store_version(root, "base", ids, vectors, meta, spec, {"weights_sha256": "x"})
    publish(root, "base")
    more_ids, more_vectors, more_meta = _items(2400, 3000)
    changes.append_version(root, "base", "appended", more_ids, more_vectors, more_meta)
    publish(root, "appended")
    assert read_manifest(root, "appended")["search"] == read_manifest(root, "base")["search"]  # until compaction
    compacted = read_manifest(root, changes.compact(root)["version"])
    all_ids, all_vectors, all_meta = _items(0, 3000)
    store_version(fresh_root, "fresh", all_ids, all_vectors, all_meta, spec, {"weights_sha256": "x"})
    assert compacted["search"] == read_manifest(fresh_root, "fresh")["search"]
    assert compacted["search"]["queries"] == 200 and compacted["search"]["target_recall"] == 0.95
