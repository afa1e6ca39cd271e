"""A version assembled shard by shard from a build's written partitions (fastslow.index.assemble) equals the one
written from the same vectors gathered in memory (`collect` + `store_version`), and its driver does not hold every
vector."""

import json
import tracemalloc

import numpy as np
import pytest

from fastslow.index.assemble import assemble, local_map, scan
from fastslow.index.build import collect, store_version
from fastslow.index.partition import write_partition
from fastslow.index.publish import load_version, publish, read_manifest
from fastslow.index.shards import IndexSpec
from helpers import search_all

MODEL = {"checkpoint": "runs/fast/checkpoint", "weights_sha256": "ab" * 32, "num_frames": 4}
ROOT = "/data/photos"


def _write_build(build_dir: str, partitions: int, per: int, dim: int, seed: int = 0) -> list:
    """`partitions` written partitions of `per` items (unit vectors; one error each; the last partition repeats
    the first item's id): the plan (one list of ids per partition), as the build writes them."""
    rng = np.random.default_rng(seed)
    plan = []
    for p in range(partitions):
        items = [{"id": f"img-{p:03d}-{i:04d}", "uri": f"{ROOT}/{p}/{i}.jpg", "media": "image",
                  "captions": [f"caption {p} {i}"], "width": 32, "height": 24,
                  "meta": {"url": f"https://example.com/{p}/{i}.jpg"} if i % 2 else {}} for i in range(per)]
        if p == partitions - 1:
            items[-1] = {**items[-1], "id": "img-000-0000"}  # a duplicate id: reported, the first is indexed
        vectors = rng.normal(size=(per, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        errors = [{"id": f"bad-{p}", "uri": f"{ROOT}/{p}/bad.jpg", "reason": "not an image"}]
        write_partition(build_dir, p, items, errors, vectors)
        plan.append([{"id": i["id"]} for i in items])
    return plan


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_the_assembled_version_equals_the_gathered_one(tmp_path, factory):
    build_dir = str(tmp_path / "build")
    plan = _write_build(build_dir, partitions=5, per=120, dim=16)
    spec = IndexSpec(factory=factory, shards=3, train_sample=400, tune_queries=100)
    layout = scan(build_dir, plan)
    assert layout.items == 5 * 120 - 1 and layout.dim == 16 and layout.shard_read == 0
    assert len(layout.errors) == 5 + 1 and layout.errors[-2]["reason"].startswith("duplicate id (indexed from")
    streamed = assemble(build_dir, layout, str(tmp_path / "a"), "v1", spec, MODEL, ROOT, local_map)
    ids, vectors, metadata, errors, _ = collect(build_dir, plan, ROOT)
    assert errors == layout.errors and len(ids) == layout.items
    store_version(str(tmp_path / "b"), "v1", ids, vectors, metadata, spec, MODEL)
    gathered = read_manifest(str(tmp_path / "b"), "v1")
    assert streamed["search"] == gathered["search"] and streamed["factory"] == gathered["factory"] == factory
    assert [s["count"] for s in streamed["shards"]] == [s["count"] for s in gathered["shards"]]
    for root in ("a", "b"):
        publish(str(tmp_path / root), "v1")
    a, b = load_version(str(tmp_path / "a")), load_version(str(tmp_path / "b"))
    for s in range(3):
        np.testing.assert_array_equal(a.rows[s], b.rows[s])  # the same items in each shard, in the same order
        assert a.shard_metadata[s].to_pylist() == b.shard_metadata[s].to_pylist()
        if factory == "Flat":  # the same vectors, bit for bit
            np.testing.assert_array_equal(a.indexes[s].reconstruct_n(0, a.indexes[s].ntotal),
                                          b.indexes[s].reconstruct_n(0, b.indexes[s].ntotal))
    queries = vectors[::37]
    for nprobe in (1, 4):  # the same trained quantizer and lists: the same answers at every nprobe
        assert (search_all(a.indexes, a.rows, queries, 10, "ip", nprobe=nprobe)[1]
                == search_all(b.indexes, b.rows, queries, 10, "ip", nprobe=nprobe)[1]).all()
    hit = a.metadata.to_pylist()[1]
    assert hit["location"] == json.loads(hit["metadata"])["url"] and "embedding" not in hit


def test_the_driver_does_not_hold_every_vector(tmp_path):
    """Peak numpy memory of the whole assembly (shards filled in this process, one after another) against the
    vectors' size: the driver holds ids and the sample, each shard its own vectors."""
    # Both ways once on a tiny build first: a first import's allocations would be traced too.
    warm = str(tmp_path / "warm")
    warm_plan = _write_build(warm, partitions=1, per=30, dim=64)
    assemble(warm, scan(warm, warm_plan), str(tmp_path / "warm-a"), "v1", IndexSpec(shards=2), MODEL, ROOT)
    store_version(str(tmp_path / "warm-b"), "v1", *collect(warm, warm_plan, ROOT)[:3], IndexSpec(shards=2), MODEL)

    build_dir = str(tmp_path / "build")
    plan = _write_build(build_dir, partitions=8, per=5000, dim=64)
    layout = scan(build_dir, plan)
    all_bytes = layout.items * 64 * 4
    spec = IndexSpec(factory="Flat", shards=8, train_sample=1000, tune_queries=200)
    peaks = {}
    for way in ("assembled", "gathered"):
        tracemalloc.start()
        if way == "assembled":
            assemble(build_dir, layout, str(tmp_path / way), "v1", spec, MODEL, ROOT, local_map)
        else:
            ids, vectors, metadata, _, _ = collect(build_dir, plan, ROOT)
            store_version(str(tmp_path / way), "v1", ids, vectors, metadata, spec, MODEL)
            del vectors
        peaks[way] = tracemalloc.get_traced_memory()[1] / all_bytes
        tracemalloc.stop()
    # Assembled: an eighth of the vectors twice while a shard's are put in id order, and one partition's file (an
    # eighth) at a time: about 0.4. Gathered: every vector, and more.
    assert peaks["assembled"] < 0.5 and peaks["gathered"] > 1.0, peaks


def test_shards_left_empty_are_written_empty_and_load(tmp_path):
    build_dir = str(tmp_path / "build")
    plan = _write_build(build_dir, partitions=1, per=4, dim=8)
    layout = scan(build_dir, plan)
    manifest = assemble(build_dir, layout, str(tmp_path / "index"), "v1", IndexSpec(shards=8), MODEL, ROOT)
    assert sum(s["count"] for s in manifest["shards"]) == 3 and [s["count"] for s in manifest["shards"]].count(0) >= 5
    publish(str(tmp_path / "index"), "v1")
    loaded = load_version(str(tmp_path / "index"))
    assert sorted(loaded.metadata.column("id").to_pylist()) == sorted({i["id"] for i in plan[0]})  # 1 duplicate
    assert set(loaded.shard_metadata[0].column_names) == set(loaded.shard_metadata[1].column_names)
