"""Indexing as a Ray job, the way users run it: `ray job submit` of jobs.build_index on a local cluster.

A folder of images and videos (with a corrupt image, a truncated video and a stray file) is
indexed into 3 shards; everything read is indexed or in the errors file; the sharded search
equals one flat index over the same vectors; a job stopped mid-way and resubmitted gives the
same index as an uninterrupted build.
"""

import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from media_fixtures import make_jpeg_bytes, make_mp4_bytes, random_bytes, write_file
from test_jobs_training import TINY_FAST, wait_for

from fastslow.index.publish import current_version, load_version
from fastslow.index.shards import IndexSpec, build_shards, search_all


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """24 images and 4 videos, plus a corrupt jpg, a truncated mp4 and a pdf: 31 files, 28 indexable."""
    root = tmp_path_factory.mktemp("collection")
    for i in range(24):  # every photo its own colour: no two items tie
        write_file(root / f"photos/p{i:02d}.jpg", make_jpeg_bytes(40 + i, 32, (10 * i, 250 - 10 * i, 37 * i % 256)))
    write_file(root / "photos/p00.txt", b"a red photo")
    for i in range(4):
        write_file(root / f"clips/c{i}.mp4", make_mp4_bytes(num_frames=8 + i))
    write_file(root / "photos/broken.jpg", random_bytes(500))
    write_file(root / "clips/truncated.mp4", make_mp4_bytes(num_frames=12)[:300])
    write_file(root / "notes.pdf", b"%PDF-1.4")
    return str(root)


@pytest.fixture(scope="module")
def fast_checkpoint(tmp_path_factory, collection):
    """A tiny Fast model (trained for one epoch on the synthetic images, in this process)."""
    out = tmp_path_factory.mktemp("fastckpt")
    data = out / "synth"
    subprocess.run([sys.executable, "-m", "fastslow", "synth", "--out", str(data), "--size", "tiny", "--no-progress"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "fastslow", "train", "fast", "--data", str(data / "images"), "--out",
                    str(out / "run"), *TINY_FAST, "train.epochs=1", "train.batch_size=8", "--no-progress"],
                   check=True, capture_output=True, timeout=300)
    return str(out / "run" / "checkpoint")


def _build(submit_job, job, collection, checkpoint, root, *extra):
    client = submit_job(job, "jobs.build_index", "--data", collection, "--checkpoint", checkpoint, "--root", root,
                        "index.shards=3", "embed.partition_size=4", "data.num_frames=4", *extra)
    return client


def test_index_job_indexes_everything_or_reports_it(collection, fast_checkpoint, tmp_path, submit_job):
    root, job = str(tmp_path / "index"), f"index-{uuid.uuid4().hex[:8]}"
    client = _build(submit_job, job, collection, fast_checkpoint, root)
    status, logs = wait_for(client, job)
    assert status == "SUCCEEDED", logs[-4000:]
    summary = json.loads(logs[logs.rindex("{\n"):])
    assert (summary["read"], summary["indexed"], summary["errors"]) == (31, 28, 3)
    assert "indexed 28 of 31 items read (3 errors" in logs

    loaded = load_version(root)
    assert loaded.version == current_version(root) == summary["version"]
    assert loaded.manifest["model"]["collection_root"] == collection  # where the search app may serve media from
    ids = loaded.metadata.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 28 and sum(ix.ntotal for ix in loaded.indexes) == 28
    assert sorted(ids)[:2] == ["clips/c0.mp4", "clips/c1.mp4"]
    meta = {r["id"]: r for r in loaded.metadata.to_pylist()}
    assert meta["photos/p03.jpg"]["width"] == 43 and meta["photos/p00.jpg"]["caption"] == "a red photo"
    assert meta["clips/c0.mp4"]["duration"] == pytest.approx(1.0, abs=0.2)
    with open(summary["errors_file"]) as f:
        errors = {e["id"]: e["reason"] for e in map(json.loads, f)}
    assert set(errors) == {"photos/broken.jpg", "clips/truncated.mp4", "notes.pdf"}
    assert "corrupt" in errors["photos/broken.jpg"] or "not an image" in errors["photos/broken.jpg"]

    # The shards' merged search equals one flat index over the same vectors.
    from fastslow.models.fast import FastModel
    from fastslow.runs import load_model

    vectors = np.zeros((len(ids), loaded.dim), np.float32)
    for ix, rows in zip(loaded.indexes, loaded.rows):
        vectors[rows] = ix.reconstruct_n(0, ix.ntotal)
    flat, flat_rows = build_shards(ids, vectors, IndexSpec(shards=1))
    model = load_model(fast_checkpoint, FastModel)
    queries = model.encode_text(["a red photo", "a green square", "a grey clip"]).detach().numpy()
    # 11 results, 10 compared: a tie across the cut shows as a tie with the 11th.
    s_scores, sharded = search_all(loaded.indexes, loaded.rows, queries, 11, "ip")
    f_scores, single = search_all(flat, flat_rows, queries, 11, "ip")
    np.testing.assert_allclose(s_scores, f_scores, rtol=1e-5, atol=1e-6)
    # Equal ids wherever the score has no tie in its row (some clips decode to the same frames, and
    # FAISS orders tied items freely); at ties the scores above already agree.
    near = lambda a, b: np.isclose(a, b, rtol=0, atol=1e-6)  # noqa: E731
    tied = np.zeros_like(s_scores, dtype=bool)
    tied[:, 1:] |= near(s_scores[:, 1:], s_scores[:, :-1])
    tied[:, :-1] |= near(s_scores[:, :-1], s_scores[:, 1:])
    assert (sharded == single)[:, :10][~tied[:, :10]].all() and (~tied[:, :10]).sum() >= 10


def test_stopped_build_resubmitted_gives_the_same_index(collection, fast_checkpoint, tmp_path, submit_job):
    whole, interrupted = str(tmp_path / "whole"), str(tmp_path / "interrupted")
    job = f"whole-{uuid.uuid4().hex[:8]}"
    client = _build(submit_job, job, collection, fast_checkpoint, whole)
    assert wait_for(client, job)[0] == "SUCCEEDED"

    first = f"first-{uuid.uuid4().hex[:8]}"
    # One embedding actor and small partitions: the build is still going when the first files appear.
    _build(submit_job, first, collection, fast_checkpoint, interrupted, "embed.concurrency=1")
    version = load_version(whole).version
    done_dir = os.path.join(interrupted, "builds", version, "embeddings")
    deadline = time.time() + 300
    while not (os.path.isdir(done_dir) and os.listdir(done_dir)):
        assert time.time() < deadline, client.get_job_logs(first)[-3000:]
        time.sleep(0.2)
    client.stop_job(first)
    assert wait_for(client, first, timeout=120)[0] == "STOPPED"
    written = len(os.listdir(done_dir))
    assert 1 <= written < 9  # 9 partitions (25 images and 5 videos by 4): some were left to do

    second = f"second-{uuid.uuid4().hex[:8]}"
    _build(submit_job, second, collection, fast_checkpoint, interrupted, "embed.concurrency=1")
    status, logs = wait_for(client, second)
    assert status == "SUCCEEDED", logs[-4000:]
    a, b = load_version(whole), load_version(interrupted)
    assert a.version == b.version
    assert a.metadata.column("id").to_pylist() == b.metadata.column("id").to_pylist()
    for s in range(3):
        assert a.rows[s].tolist() == b.rows[s].tolist()
        np.testing.assert_allclose(a.indexes[s].reconstruct_n(0, a.indexes[s].ntotal),
                                   b.indexes[s].reconstruct_n(0, b.indexes[s].ntotal), rtol=1e-5, atol=1e-6)
