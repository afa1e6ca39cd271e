"""Index versions: written whole, published by one pointer write, loaded only after verification."""

import json

import numpy as np
import pyarrow as pa
import pytest

from fastslow import storage
from fastslow.errors import FastslowError
from fastslow.index.publish import current_version, load_version, publish, version_dir, write_version
from fastslow.index.shards import IndexSpec, build_shards
from helpers import search_all

MODEL = {"checkpoint": "runs/fast/checkpoint", "weights_sha256": "ab" * 32}


def _build(n=300, d=8, shards=3, seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    ids = [f"img-{i}" for i in range(n)]
    spec = IndexSpec(shards=shards)
    indexes, rows = build_shards(ids, vectors, spec)
    meta = pa.table({"id": ids, "uri": [f"/data/{i}.jpg" for i in ids]})
    return indexes, rows, meta, spec, vectors


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "index")
    return f"{request.getfixturevalue('s3_bucket')}/index"


def test_write_publish_load_round_trip(root):
    indexes, rows, meta, spec, vectors = _build()
    manifest = write_version(root, "v1", indexes, rows, meta, spec, MODEL)
    assert manifest["items"] == 300 and [s["count"] for s in manifest["shards"]] == [ix.ntotal for ix in indexes]
    publish(root, "v1")
    assert current_version(root) == "v1"
    loaded = load_version(root, expect_dim=8, expect_model_sha256=MODEL["weights_sha256"])
    assert loaded.version == "v1" and loaded.metadata.column("id").to_pylist() == meta.column("id").to_pylist()
    q = vectors[:5]
    assert (search_all(loaded.indexes, loaded.rows, q, 3, "ip")[1] == search_all(indexes, rows, q, 3, "ip")[1]).all()
    only = load_version(root, "v1", shards=[1])
    assert len(only.indexes) == 1 and only.indexes[0].ntotal == indexes[1].ntotal


def test_current_moves_only_to_complete_versions(root):
    indexes, rows, meta, spec, _ = _build()
    write_version(root, "v1", indexes, rows, meta, spec, MODEL)
    publish(root, "v1")
    # A version whose writer died before its manifest: never published, CURRENT stays.
    storage.write_bytes(storage.join(version_dir(root, "v2"), "shard-000.faiss"), b"half")
    with pytest.raises(FastslowError, match="incomplete or missing version"):
        publish(root, "v2")
    assert current_version(root) == "v1" and load_version(root).version == "v1"
    with pytest.raises(FastslowError, match="already exists"):
        write_version(root, "v1", indexes, rows, meta, spec, MODEL)


@pytest.mark.faults
@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["checksum", "dimension", "model", "count"])
def test_a_damaged_or_mismatched_version_is_refused(tmp_path, damage, fault_record):
    root = str(tmp_path / "index")
    indexes, rows, meta, spec, _ = _build()
    write_version(root, "v1", indexes, rows, meta, spec, MODEL)
    base = version_dir(root, "v1")
    kwargs = {}
    if damage == "checksum":
        path = f"{base}/shard-001.faiss"
        data = bytearray(open(path, "rb").read())
        data[-1] ^= 0xFF
        open(path, "wb").write(bytes(data))
        needle = "shard-001.faiss: checksum does not match"
    elif damage == "dimension":
        kwargs, needle = {"expect_dim": 16}, "dimension 8 does not match the model's 16"
    elif damage == "model":
        kwargs, needle = {"expect_model_sha256": "cd" * 32}, "built with another model"
    else:
        manifest = json.loads(open(f"{base}/manifest.json").read())
        manifest["shards"][0]["count"] += 1
        open(f"{base}/manifest.json", "w").write(json.dumps(manifest))
        needle = "manifest says"
    with pytest.raises(FastslowError, match=needle) as refused:
        load_version(root, "v1", **kwargs)
    fault_record("input", f"index version: {damage} damaged or mismatched", refused=True, message=str(refused.value))


def test_missing_pointer_is_a_clear_error(tmp_path):
    with pytest.raises(FastslowError, match="no published index"):
        current_version(str(tmp_path))
