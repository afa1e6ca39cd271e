"""The index build as the core's pipeline, in one process and without Ray (`fastslow.index.build`).

The mixed collection (31 items read, 28 indexable) in 3 shards and partitions of 4 items (9
partitions), the settings the Ray job's tests use: everything read is indexed or in errors.jsonl,
the version is published, one partition runs (and reruns) alone, and a rerun changes nothing.
The Ray job against this pipeline on the same input: tests/test_jobs_index.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastslow import storage
from fastslow.errors import FastslowError
from fastslow.index.build import IndexBuild, build_index
from fastslow.index.partition import partition_files
from fastslow.index.publish import current_version, load_version, version_dir
from helpers import index_config, index_overrides, index_vectors

PARTITIONS, ITEMS_IN, INDEXED, REPORTED = 9, 31, 28, 3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The whole build in a fresh interpreter: the summary, and whether Ray got imported on the way.
BUILD_SCRIPT = """
import json, sys
from fastslow.config import IndexRunConfig, load_config
from fastslow.index.build import build_index
summary = build_index(load_config(IndexRunConfig, None, json.loads(sys.argv[1])))
print(json.dumps({"summary": summary, "ray_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "ray")}))
"""


@pytest.fixture(scope="module")
def built(mixed_collection, tiny_fast_checkpoint, tmp_path_factory):
    """The local executor's build, run in a fresh process: (root, summary, Ray modules it loaded)."""
    root = str(tmp_path_factory.mktemp("local") / "index")
    out = subprocess.run([sys.executable, "-c", BUILD_SCRIPT,
                          json.dumps(index_overrides(mixed_collection, tiny_fast_checkpoint, root))],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return root, result["summary"], result["ray_loaded"]


def test_local_build_indexes_everything_or_reports_it_without_ray(built, mixed_collection):
    root, summary, ray_loaded = built
    assert ray_loaded == []  # the whole build ran in one process, and never imported Ray
    assert (summary["read"], summary["indexed"], summary["errors"]) == (ITEMS_IN, INDEXED, REPORTED)
    assert current_version(root) == summary["version"] and summary["version"].startswith("v-")
    loaded = load_version(root)
    assert loaded.manifest["model"]["collection_root"] == mixed_collection
    ids = loaded.metadata.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == INDEXED and sum(ix.ntotal for ix in loaded.indexes) == INDEXED
    with open(summary["errors_file"]) as f:
        errors = {e["id"]: e["reason"] for e in map(json.loads, f)}
    assert set(errors) == {"photos/broken.jpg", "clips/truncated.mp4", "notes.pdf"}
    # Every item of the folder is indexed or reported, once.
    on_disk = {os.path.relpath(os.path.join(d, n), mixed_collection) for d, _, names in os.walk(mixed_collection)
               for n in names if not n.endswith(".txt")}
    assert set(ids) | set(errors) == on_disk and not set(ids) & set(errors)
    meta = {r["id"]: r for r in loaded.metadata.to_pylist()}
    assert meta["photos/p03.jpg"]["width"] == 43 and meta["photos/p00.jpg"]["caption"] == "a red photo"


def test_run_partition_writes_only_its_partition_and_a_lost_one_reruns_alone(built, mixed_collection,
                                                                                tiny_fast_checkpoint, tmp_path):
    ref_root, ref_summary, _ = built
    root = str(tmp_path / "index")
    build = IndexBuild.prepare(index_config(mixed_collection, tiny_fast_checkpoint, root))
    assert build.version == ref_summary["version"]  # the name depends on the input, not on the root
    assert build.pending() == list(range(PARTITIONS))
    counts = build.run_partition(3)
    assert counts["partition"] == 3 and counts["indexed"] + counts["errors"] == 4
    written = storage.list_files(storage.join(build.build_dir, "embeddings"), suffixes=(".parquet",))
    assert [os.path.basename(w) for w in written] == ["part-00003.parquet"]
    assert build.pending() == [p for p in range(PARTITIONS) if p != 3]
    with pytest.raises(FastslowError, match="not written yet"):
        build.finish()
    assert not storage.exists(storage.join(root, "CURRENT"))

    for p in build.pending():
        build.run_partition(p)
    # Partition 5's output lost (as if its worker died before the write): only it runs again.
    os.remove(partition_files(build.build_dir, 5)[0])
    before = {p: os.stat(partition_files(build.build_dir, p)[0]).st_mtime_ns for p in range(PARTITIONS) if p != 5}
    again = IndexBuild.prepare(index_config(mixed_collection, tiny_fast_checkpoint, root))
    assert again.pending() == [5]
    again.run_partition(5)
    assert {p: os.stat(partition_files(build.build_dir, p)[0]).st_mtime_ns for p in before} == before
    summary = again.finish()
    assert (summary["version"], summary["read"], summary["indexed"], summary["errors"]) == \
        (ref_summary["version"], ITEMS_IN, INDEXED, REPORTED)
    (ids, vectors), (ref_ids, ref_vectors) = index_vectors(root), index_vectors(ref_root)
    assert ids == ref_ids and np.allclose(vectors, ref_vectors, atol=1e-6)


def test_rerun_is_a_no_op_giving_the_same_version(built, mixed_collection, tiny_fast_checkpoint):
    root, summary, _ = built
    manifest = storage.join(version_dir(root, summary["version"]), "manifest.json")
    stamps = [os.stat(p).st_mtime_ns for p in (manifest, os.path.join(root, "CURRENT"))]
    build = IndexBuild.prepare(index_config(mixed_collection, tiny_fast_checkpoint, root))
    assert build.version == summary["version"] and build.pending() == []
    again = build_index(index_config(mixed_collection, tiny_fast_checkpoint, root))
    assert {k: again[k] for k in ("version", "read", "indexed", "errors", "errors_file")} == \
        {k: summary[k] for k in ("version", "read", "indexed", "errors", "errors_file")}
    assert [os.stat(p).st_mtime_ns for p in (manifest, os.path.join(root, "CURRENT"))] == stamps
    assert current_version(root) == summary["version"]


def test_append_with_nothing_new_keeps_the_live_version_and_reports_the_unreadable_again(
        built, mixed_collection, tiny_fast_checkpoint):
    root, summary, _ = built
    cfg = index_config(mixed_collection, tiny_fast_checkpoint, root)
    cfg.append = True
    again = build_index(cfg)
    # The 28 indexed items are held: not read again. The 3 that could not be indexed are tried again, and reported.
    assert again["version"] == summary["version"] and again["appended_to"] == summary["version"]
    assert again["indexed"] == 0 and again["already_indexed"] == INDEXED
    assert again["read"] == again["errors"] == REPORTED
    assert current_version(root) == summary["version"]
