"""Fault suite, img2dataset tar shards indexed by `ray job submit` of jobs.build_index: hostile shards (a
truncated tar, a member that is not an image, a `.json` that is not JSON, a key with no image, a key met again
in a later shard, an empty shard, a shard the brace pattern names that is not there) each reported with its
shard, key and reason while the rest of each shard is indexed (items read = indexed + reported); and the job
killed mid-way and submitted again gives the same index as an uninterrupted build."""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import pytest
from helpers import build, built_by_job, job_id, job_status, job_summary, wait_for
from media_fixtures import make_jpeg_bytes, random_bytes
from img2dataset_fixtures import write_members
from synth_shards import img2dataset_meta

from fastslow import storage
from fastslow.index.publish import load_version

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40), (200, 40, 200), (40, 200, 210)]
GOOD_PER_SHARD = 6


def _good(shard: int, i: int) -> tuple[str, dict[str, bytes]]:
    key = f"{shard:05d}{i:04d}"
    jpeg = make_jpeg_bytes(40 + i, 32, COLOURS[(shard + i) % len(COLOURS)])
    caption = f"a {['red', 'green', 'blue', 'yellow', 'purple', 'cyan'][(shard + i) % 6]} picture"
    meta = img2dataset_meta(key, f"https://example.com/{key}.jpg", caption, jpeg)
    return key, {"jpg": jpeg, "txt": caption.encode(), "json": json.dumps(meta, indent=4).encode()}


def _tar(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """The samples' members (each sample's fields in sorted order, as webdataset's TarWriter writes them)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "shard.tar")
        write_members(path, [(f"{key}.{f}", sample[f]) for key, sample in samples for f in sorted(sample)])
        with open(path, "rb") as f:
            return f.read()


def write_hostile_shards(folder: str) -> dict:
    """Five shards (and a sixth named by the pattern but missing); {"pattern", "good": ids, "errors": {id: reason}}."""
    os.makedirs(folder, exist_ok=True)
    good, errors = [], {}
    shard0 = [_good(0, i) for i in range(GOOD_PER_SHARD)]
    not_image = ("000000900", {"jpg": random_bytes(700, seed=9), "txt": b"noise", "json": b"{}"})
    bad_json = ("000000901", {"jpg": make_jpeg_bytes(), "txt": b"fine", "json": b"{not json"})
    no_image = ("000000902", {"txt": b"a caption alone", "json": b"{}"})
    write = lambda n, data: open(os.path.join(folder, f"{n:05d}.tar"), "wb").write(data)  # noqa: E731
    write(0, _tar(shard0[:3] + [not_image, bad_json, no_image] + shard0[3:]))
    good += [k for k, _ in shard0]
    errors |= {not_image[0]: "not an image", bad_json[0]: "metadata .json is not JSON", no_image[0]: "no media member"}
    shard1 = [_good(1, i) for i in range(GOOD_PER_SHARD)] + [(shard0[0][0], _good(0, 0)[1])]  # key of shard 0 again
    write(1, _tar(shard1))
    good += [k for k, _ in shard1[:-1]]
    errors[f"{shard0[0][0]}@1"] = "duplicate id"
    write(2, _tar([]))  # an empty shard: only the end-of-archive blocks
    errors["00002.tar"] = "empty shard"
    shard3 = [_good(3, i) for i in range(GOOD_PER_SHARD)]
    whole = _tar(shard3)
    cut = whole.index(f"{shard3[3][0]}.jpg".encode()) + 512 + 100  # inside the 4th item's image (past its header)
    write(3, whole[:cut])
    good += [k for k, _ in shard3[:3]]
    errors[shard3[3][0]] = "truncated tar"
    shard4 = [_good(4, i) for i in range(GOOD_PER_SHARD)]
    write(4, _tar(shard4))
    good += [k for k, _ in shard4]
    errors["00005.tar"] = "missing shard"
    return {"pattern": os.path.join(folder, "{00000..00005}.tar"), "good": sorted(good), "errors": errors}


@pytest.fixture(scope="module")
def hostile_shards(tmp_path_factory):
    return write_hostile_shards(str(tmp_path_factory.mktemp("hostile-shards") / "laion"))


@pytest.fixture(scope="module")
def reference(hostile_shards, tiny_fast_checkpoint, tmp_path_factory, submit_module_job):
    """An uninterrupted build of the hostile shards by the index job: (root, logs, summary)."""
    root = str(tmp_path_factory.mktemp("shards-reference") / "index")
    logs, summary = built_by_job(submit_module_job, "shards-ref", hostile_shards["pattern"], tiny_fast_checkpoint, root)
    return root, logs, summary


def test_hostile_shards_are_each_reported_and_the_rest_indexed(hostile_shards, reference, fault_record):
    root, logs, summary = reference
    expected = hostile_shards["errors"]
    assert (summary["read"], summary["indexed"], summary["errors"]) == (
        len(hostile_shards["good"]) + len(expected), len(hostile_shards["good"]), len(expected))
    loaded = load_version(root)
    assert sorted(loaded.metadata.column("id").to_pylist()) == hostile_shards["good"]
    errors = [json.loads(line) for line in storage.read_text(summary["errors_file"]).splitlines()]
    duplicate = [e for e in errors if e["reason"].startswith("duplicate id")]
    assert len(duplicate) == 1 and duplicate[0]["uri"].endswith("00001.tar#000000000.jpg")
    by_id = {e["id"]: e for e in errors if e not in duplicate}
    assert set(by_id) | {f"{duplicate[0]['id']}@1"} == set(expected)
    for item_id, reason in expected.items():
        error = duplicate[0] if item_id.endswith("@1") else by_id[item_id]
        assert reason in error["reason"], (item_id, error)
        assert ".tar" in error["uri"]  # names the shard (and the member, where there is one)
        fault_record("input", f"tar shards: {reason} ({item_id})", refused=True, message=error["reason"])
    fault_record("input", "hostile tar shards through the index job", tried=summary["read"], refused=summary["errors"],
                 items_in=summary["read"], indexed=summary["indexed"], reported=summary["errors"])


def _chunks_written(root: str) -> int:
    return len([f for f in storage.list_files(os.path.join(root, "builds")) if ".chunk-" in f and f.endswith(".parquet")])


def test_shard_index_job_killed_mid_way_resumes_to_the_same_index(
        hostile_shards, reference, tiny_fast_checkpoint, tmp_path, submit_job, fault_record):
    ref_root, _, ref_summary = reference
    root, first = str(tmp_path / "index"), job_id("shards-killed")
    # Chunks of 2 items and one embedding actor: the kill lands between chunks of a shard.
    client = build(submit_job, first, hostile_shards["pattern"], tiny_fast_checkpoint, root, "embed.concurrency=1",
                   "embed.partition_size=2")
    deadline = time.time() + 300
    while _chunks_written(root) < 3:
        assert time.time() < deadline and job_status(client, first) in ("PENDING", "RUNNING"), \
            client.get_job_logs(first)[-3000:]
        time.sleep(0.05)
    client.stop_job(first)
    status, _ = wait_for(client, first, timeout=120)
    assert status == "STOPPED"
    done = len([f for f in storage.list_files(os.path.join(root, "builds")) if f.endswith(".done.json")])
    second = job_id("shards-resumed")
    build(submit_job, second, hostile_shards["pattern"], tiny_fast_checkpoint, root, "embed.concurrency=1",
          "embed.partition_size=2")
    status, logs = wait_for(client, second)
    assert status == "SUCCEEDED", logs[-3000:]
    a, b = load_version(ref_root), load_version(root)
    ids_a, ids_b = a.metadata.column("id").to_pylist(), b.metadata.column("id").to_pylist()
    assert sorted(ids_b) == sorted(ids_a) == hostile_shards["good"]
    vectors = lambda v, ids: {i: v.indexes[s].reconstruct(int(k)) for s in range(len(v.indexes))  # noqa: E731
                              for k, r in enumerate(v.rows[s]) for i in [ids[int(r)]]}
    va, vb = vectors(a, ids_a), vectors(b, ids_b)
    for item_id in ids_a:
        np.testing.assert_allclose(va[item_id], vb[item_id], rtol=1e-5, atol=1e-6)
    summary = job_summary(logs)
    assert (summary["read"], summary["indexed"], summary["errors"]) == (
        ref_summary["read"], ref_summary["indexed"], ref_summary["errors"])
    fault_record("fault", f"tar-shard index job: ray job stop after {done} of 5 shard partitions, resubmitted",
                 injected=1, items_in=ref_summary["read"], indexed=len(ids_b), reported=ref_summary["errors"],
                 foreign_ids=0)
