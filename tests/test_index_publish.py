"""Index versions: written whole, published by one pointer write, loaded only after verification."""

import json
import os

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


def test_each_shard_reads_only_its_own_metadata_file(tmp_path):
    """A replica of shard 1 loads shard 1's metadata alone: the other shards' files may be gone; a damaged one of
    its own is refused; a hit's fields come from Arrow columns, not a dict per item."""
    import pyarrow as pa

    from fastslow.search.shard import ShardSearcher

    root = str(tmp_path / "index")
    indexes, rows, meta, spec, vectors = _build()
    manifest = write_version(root, "v1", indexes, rows, meta, spec, MODEL)
    publish(root, "v1")
    base = version_dir(root, "v1")
    assert [s["metadata_file"] for s in manifest["shards"]] == [f"shard-{s:03d}.meta.parquet" for s in range(3)]
    whole = load_version(root).metadata  # all shards: the table in global row order, as written
    assert whole.to_pylist() == meta.to_pylist()
    for other in (0, 2):
        os.remove(f"{base}/shard-{other:03d}.meta.parquet")
    searcher = ShardSearcher(root, 1)
    assert len(searcher) == indexes[1].ntotal and isinstance(searcher.columns["id"], pa.ChunkedArray)
    [hits] = searcher.search(vectors[:1], 3)
    assert [h["row"] for h in hits] == search_all(indexes[1:2], rows[1:2], vectors[:1], 3, "ip")[1][0].tolist()
    assert [(h["id"], h["uri"]) for h in hits] == [(f"img-{h['row']}", f"/data/img-{h['row']}.jpg") for h in hits]
    assert searcher.lookup(hits[0]["id"])["uri"] == hits[0]["uri"] and searcher.lookup("img-none") is None
    with pytest.raises(storage.MissingFileError):
        ShardSearcher(root, 0)
    path = f"{base}/shard-001.meta.parquet"
    open(path, "ab").write(b"x")
    with pytest.raises(FastslowError, match="shard-001.meta.parquet: checksum does not match"):
        ShardSearcher(root, 1)


def test_a_version_written_with_one_metadata_file_still_loads(tmp_path):
    """Versions written before per-shard metadata hold one metadata.parquet for every shard."""
    import hashlib
    import io

    import pyarrow.parquet as pq

    root = str(tmp_path / "index")
    indexes, rows, meta, spec, _ = _build()
    write_version(root, "v1", indexes, rows, meta, spec, MODEL)
    base = version_dir(root, "v1")
    manifest = json.loads(open(f"{base}/manifest.json").read())
    buf = io.BytesIO()
    pq.write_table(meta, buf)
    open(f"{base}/metadata.parquet", "wb").write(buf.getvalue())
    manifest["metadata"] = {"file": "metadata.parquet", "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                            "count": meta.num_rows}
    for entry in manifest["shards"]:
        os.remove(f"{base}/{entry.pop('metadata_file')}")
        entry.pop("metadata_sha256")
    open(f"{base}/manifest.json", "w").write(json.dumps(manifest))
    loaded = load_version(root, "v1")
    assert loaded.metadata.to_pylist() == meta.to_pylist()
    one = load_version(root, "v1", shards=[2])
    assert one.shard_metadata[0].column("id").to_pylist() == [f"img-{r}" for r in rows[2]]
