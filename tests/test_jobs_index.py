"""Indexing as a Ray job, the way users run it: `ray job submit` of jobs.build_index on a local cluster.

A folder of images and videos (with a corrupt image, a truncated video and a stray file) is
indexed into 3 shards; everything read is indexed or in the errors file; the sharded search
equals one flat index over the same vectors; the core's local pipeline (no Ray) builds the same
version. Builds killed mid-way and resubmitted: tests/test_faults_index.py.
"""

import json

import numpy as np
import pytest
from helpers import built_by_job, index_config, index_vectors, search_all

from fastslow import storage
from fastslow.index.publish import current_version, load_version
from fastslow.index.shards import IndexSpec, build_shards


@pytest.fixture(scope="module")
def ray_built(mixed_collection, tiny_fast_checkpoint, tmp_path_factory, submit_module_job):
    """The index job's build of the mixed collection: (root, its logs, its summary)."""
    root = str(tmp_path_factory.mktemp("ray") / "index")
    logs, summary = built_by_job(submit_module_job, "index", mixed_collection, tiny_fast_checkpoint, root)
    return root, logs, summary


def test_index_job_indexes_everything_or_reports_it(ray_built, mixed_collection, tiny_fast_checkpoint):
    collection, fast_checkpoint = mixed_collection, tiny_fast_checkpoint
    root, logs, summary = ray_built
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
    from fastslow.models.checkpoint import load_model

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


def test_index_job_and_the_local_pipeline_build_the_same_version(ray_built, mixed_collection, tiny_fast_checkpoint,
                                                                  tmp_path):
    """The Ray job and the core's local executor, on the same input into two roots: the same version name, the
    same items in the same rows, the same vectors, the same errors."""
    from fastslow.index.build import build_index

    ray_root, _, ray_summary = ray_built
    local_root = str(tmp_path / "local")
    local = build_index(index_config(mixed_collection, tiny_fast_checkpoint, local_root))
    assert local["version"] == ray_summary["version"] == current_version(local_root)
    assert {k: local[k] for k in ("read", "indexed", "errors")} == {k: ray_summary[k] for k in ("read", "indexed",
                                                                                                   "errors")}
    (ids, vectors), (ray_ids, ray_vectors) = index_vectors(local_root), index_vectors(ray_root)
    assert ids == ray_ids and np.allclose(vectors, ray_vectors, atol=1e-5)
    errors = [sorted(json.loads(line)["id"] for line in storage.read_text(s["errors_file"]).splitlines())
              for s in (local, ray_summary)]
    assert errors[0] == errors[1] and len(errors[0]) == 3
    ray_index, local_index = load_version(ray_root), load_version(local_root)
    assert [r.tolist() for r in ray_index.rows] == [r.tolist() for r in local_index.rows]
    assert local_index.manifest["model"] == ray_index.manifest["model"]
