"""Index versions: a folder per build (local or s3://), its manifest written last, and a CURRENT pointer.

    <root>/versions/<version>/shard-000.faiss, shard-000.rows.npy, shard-000.meta.parquet, ..., manifest.json
    <root>/CURRENT                      the name of the live version

Each shard's items' metadata is a file of its own, in the shard's order, so a replica reads its shard's alone
(versions written before that hold one metadata.parquet for all shards, still read).

A version without its manifest is incomplete and never served. CURRENT changes in one write
(a rename locally, one PUT on S3), after the version is complete, so a reader sees the old
version or the new one, never half of one. Loading checks everything against the manifest
(files' sha256, dimension, counts, the model that embedded the items) before any byte reaches
FAISS, and runs no code from the files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from fastslow import storage
from fastslow.errors import FastslowError
from fastslow.index.shards import IndexSpec, import_faiss, resolved

FORMAT = "fastslow-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"


def version_dir(root: str, version: str) -> str:
    return storage.join(root, "versions", version)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def check_new_version(root: str, version: str) -> str:
    """The version's folder, refused if that version exists (versions are never overwritten)."""
    base = version_dir(root, version)
    if storage.exists(storage.join(base, MANIFEST)):
        raise FastslowError(f"{base}: version {version!r} already exists; versions are never overwritten")
    return base


def write_shard(base: str, shard: int, index, members: np.ndarray, metadata) -> dict:
    """One shard's files in the version folder `base` (its FAISS index, its global rows, its items' metadata in
    its order: row j for members[j]); its manifest entry."""
    faiss = import_faiss()

    rows_data = _npy_bytes(np.asarray(members, dtype=np.int64))
    meta = _parquet_bytes(metadata)
    if metadata.num_rows != len(members) or index.ntotal != len(members):
        raise FastslowError(f"write_shard {shard}: {index.ntotal} vectors, {len(members)} rows, "
                            f"{metadata.num_rows} metadata rows")
    name = f"shard-{shard:03d}"
    # Through a local file, uploaded in parts: a large shard is never held twice (index + its bytes).
    with tempfile.TemporaryDirectory(prefix="fastslow-shard-") as tmp:
        path = os.path.join(tmp, f"{name}.faiss")
        faiss.write_index(index, path)
        digest = storage.file_sha256(path)
        storage.upload_file(path, storage.join(base, f"{name}.faiss"))
    storage.write_bytes(storage.join(base, f"{name}.rows.npy"), rows_data)
    storage.write_bytes(storage.join(base, f"{name}.meta.parquet"), meta)
    return {"file": f"{name}.faiss", "sha256": digest, "rows_file": f"{name}.rows.npy",
            "rows_sha256": _sha256(rows_data), "metadata_file": f"{name}.meta.parquet",
            "metadata_sha256": _sha256(meta), "count": int(index.ntotal), "dim": int(index.d)}


def write_manifest(root: str, version: str, shards: list[dict], spec: IndexSpec, items: int, model: dict,
                   search: dict | None = None) -> dict:
    """The manifest of a version whose shards are written (their entries, in shard order); written last, it
    makes the version complete. Returns it."""
    dims = {s.pop("dim") for s in shards}
    if len(dims) != 1:
        raise FastslowError(f"write_version: shards of different dimensions {sorted(dims)}")
    if sum(s["count"] for s in shards) != items:
        raise FastslowError(f"write_version: shards hold {sum(s['count'] for s in shards)} vectors but the "
                            f"metadata has {items} rows")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dim": dims.pop(),
                "metric": spec.metric, "factory": resolved(spec, items).factory, "items": int(items),
                "shards": shards, "metadata": {"count": int(items)}, "model": model, "search": search or {}}
    storage.write_text(storage.join(version_dir(root, version), MANIFEST), json.dumps(manifest, indent=2))
    return manifest


def write_version(root: str, version: str, indexes: list, rows: list[np.ndarray], metadata, spec: IndexSpec,
                  model: dict, search: dict | None = None) -> dict:
    """Write a complete version from shards built in this process (shards, row maps, metadata, then the
    manifest); returns the manifest.

    `metadata`: a pyarrow Table with one row per item in global row order (an `id` column at least).
    `model`: the identity of the model that embedded the items (checkpoint URI and weights sha256).
    `search`: the search setting replicas use by default and the recall it was measured at (fastslow.index.tuning).
    """
    base = check_new_version(root, version)
    shards = [write_shard(base, s, index, members, metadata.take(np.asarray(members, dtype=np.int64)))
              for s, (index, members) in enumerate(zip(indexes, rows))]
    return write_manifest(root, version, shards, spec, int(metadata.num_rows), model, search)


def publish(root: str, version: str) -> None:
    """Make `version` the live one (it must be complete)."""
    read_manifest(root, version)
    storage.write_text(storage.join(root, CURRENT), version + "\n")


def current_version(root: str) -> str:
    """The live version's name."""
    uri = storage.join(root, CURRENT)
    try:
        version = storage.read_text(uri).strip()
    except storage.MissingFileError:
        raise FastslowError(f"{root}: no published index ({CURRENT} is missing)") from None
    if not version or "/" in version or version.startswith("."):
        raise FastslowError(f"{uri}: does not name a version ({version!r})")
    return version


def read_manifest(root: str, version: str) -> dict:
    """A version's manifest, checked for format; a version without one is incomplete."""
    uri = storage.join(version_dir(root, version), MANIFEST)
    try:
        manifest = json.loads(storage.read_text(uri))
    except storage.MissingFileError:
        raise FastslowError(f"{version_dir(root, version)}: incomplete or missing version (no {MANIFEST})") from None
    except json.JSONDecodeError as e:
        raise FastslowError(f"{uri}: not valid JSON ({e.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FastslowError(f"{uri}: not a fastslow index manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FastslowError(f"{uri}: index format version {manifest.get('format_version')!r} unsupported")
    return manifest


@dataclass
class LoadedIndex:
    """A verified index version (or some of its shards): FAISS shards, each shard's global rows and its items'
    metadata (a pyarrow Table, row j for rows[s][j]), the manifest."""

    version: str
    indexes: list
    rows: list[np.ndarray]
    shard_metadata: list  # pyarrow Tables
    manifest: dict

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def metadata(self):
        """The loaded shards' metadata as one table in global row order (the whole version's when all loaded)."""
        import pyarrow as pa

        return pa.concat_tables(self.shard_metadata).take(np.argsort(np.concatenate(self.rows), kind="stable"))


def _checked(uri: str, expected: str) -> bytes:
    data = storage.read_bytes(uri)
    if _sha256(data) != expected:
        raise FastslowError(f"{uri}: checksum does not match the manifest (corrupted or replaced)")
    return data


def load_version(root: str, version: str | None = None, shards: list[int] | None = None,
                 expect_dim: int | None = None, expect_model_sha256: str | None = None) -> LoadedIndex:
    """Load a version (default: CURRENT), only `shards` if given, after verifying it against its manifest."""
    faiss = import_faiss()
    import pyarrow as pa
    import pyarrow.parquet as pq

    version = version or current_version(root)
    manifest = read_manifest(root, version)
    base = version_dir(root, version)
    if expect_dim is not None and manifest["dim"] != expect_dim:
        raise FastslowError(f"{base}: index dimension {manifest['dim']} does not match the model's {expect_dim}")
    model_sha = (manifest.get("model") or {}).get("weights_sha256")
    if expect_model_sha256 is not None and model_sha != expect_model_sha256:
        raise FastslowError(f"{base}: built with another model (weights sha256 {str(model_sha)[:12]}..., "
                            f"expected {expect_model_sha256[:12]}...)")
    wanted = range(len(manifest["shards"])) if shards is None else shards
    indexes, rows, tables = [], [], []
    whole = None  # a version written before per-shard metadata: its one table, read once
    for s in wanted:
        if not 0 <= s < len(manifest["shards"]):
            raise FastslowError(f"{base}: no shard {s} (the version has {len(manifest['shards'])})")
        entry = manifest["shards"][s]
        uri = storage.join(base, entry["file"])
        with storage.local_copy(uri) as path:  # streamed to a temp file from S3; read in place locally
            if storage.file_sha256(path) != entry["sha256"]:
                raise FastslowError(f"{uri}: checksum does not match the manifest (corrupted or replaced)")
            index = faiss.read_index(path)
        members = np.load(io.BytesIO(_checked(storage.join(base, entry["rows_file"]), entry["rows_sha256"])),
                          allow_pickle=False)
        if index.d != manifest["dim"]:
            raise FastslowError(f"{base}/{entry['file']}: dimension {index.d}, manifest says {manifest['dim']}")
        if index.ntotal != entry["count"] or len(members) != entry["count"]:
            raise FastslowError(f"{base}/{entry['file']}: holds {index.ntotal} vectors and {len(members)} rows, "
                                f"manifest says {entry['count']}")
        if "metadata_file" in entry:
            table = pq.read_table(pa.BufferReader(_checked(storage.join(base, entry["metadata_file"]),
                                                      entry["metadata_sha256"])))
            where = f"{base}/{entry['metadata_file']}"
        else:
            whole = whole if whole is not None else _whole_metadata(base, manifest)
            table, where = whole.take(members), f"{base}/{manifest['metadata']['file']}"
        if table.num_rows != entry["count"]:
            raise FastslowError(f"{where}: {table.num_rows} rows, manifest says {entry['count']}")
        indexes.append(index)
        rows.append(members)
        tables.append(table)
    return LoadedIndex(version=version, indexes=indexes, rows=rows, shard_metadata=tables, manifest=manifest)


def _whole_metadata(base: str, manifest: dict):
    """The one metadata table of a version written before per-shard metadata, checked."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    entry = manifest["metadata"]
    table = pq.read_table(pa.BufferReader(_checked(storage.join(base, entry["file"]), entry["sha256"])))
    if table.num_rows != entry["count"] or table.num_rows != manifest["items"]:
        raise FastslowError(f"{base}/{entry['file']}: {table.num_rows} rows, manifest says {manifest['items']}")
    return table
