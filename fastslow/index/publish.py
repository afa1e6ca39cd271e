"""Index versions: a folder per build (local or s3://), its manifest written last, and a CURRENT pointer.

    <root>/versions/<version>/shard-000.faiss, shard-000.rows.npy, shard-000.meta.parquet, ..., manifest.json
    <root>/CURRENT                      the name of the live version

A version made by changing another (fastslow.index.changes: append, delete) shares its shards' files: a shard entry
names the version folder holding them (`dir`), and may add a delta (the added items' vectors, rows and metadata)
and a list of deleted rows. Loading adds the delta to the shard's index and hands the deleted rows on (searches
leave them out).

Each shard's items' metadata is a file of its own, in the shard's order, so a replica reads its shard's alone
(versions written before that hold one metadata.parquet for all shards, still read).

A version without its manifest is incomplete and never served. CURRENT changes in one write
(a rename locally, one PUT on S3), after the version is complete, so a reader sees the old
version or the new one, never half of one. Loading checks everything against the manifest
(files' sha256, dimension, counts, the model that embedded the items) before any byte reaches
FAISS, and runs no code from the files.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from fastslow import storage
from fastslow.errors import FastslowError
from fastslow.index.shards import IndexSpec, add_rows, import_faiss, resolved

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
    if sum(live_count(s) for s in shards) != items:
        raise FastslowError(f"write_version: shards hold {sum(live_count(s) for s in shards)} items but the "
                            f"metadata has {items} rows")
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": version, "created": created,
                "dim": dims.pop(),
                "metric": spec.metric, "factory": resolved(spec, items).factory, "items": int(items),
                "training": {"train_sample": spec.train_sample, "seed": spec.seed},
                "shards": shards, "metadata": {"count": int(items)}, "model": model, "search": search or {}}
    storage.write_text(storage.join(version_dir(root, version), MANIFEST), json.dumps(manifest, indent=2))
    return manifest


def live_count(entry: dict) -> int:
    """The items a shard entry holds: its index's, plus its delta's, less its deleted rows."""
    return entry["count"] + (entry.get("delta") or {}).get("count", 0) - (entry.get("deleted") or {}).get("count", 0)


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
    deleted: list[np.ndarray] = field(default_factory=list)  # per shard: the rows deleted since its files were written

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def metadata(self):
        """The loaded shards' live items' metadata as one table in global row order (the whole version's when all
        are loaded; deleted items left out)."""
        import pyarrow as pa

        rows = np.concatenate(self.rows)
        live = ~np.isin(rows, np.concatenate(self.deleted)) if self.deleted else np.ones(len(rows), bool)
        order = np.flatnonzero(live)[np.argsort(rows[live], kind="stable")]
        return pa.concat_tables(self.shard_metadata).take(order)


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
    indexes, rows, tables, deleted = [], [], [], []
    for s in wanted:
        if not 0 <= s < len(manifest["shards"]):
            raise FastslowError(f"{base}: no shard {s} (the version has {len(manifest['shards'])})")
        index, members, table = _load_shard(root, base, manifest, manifest["shards"][s])
        indexes.append(index)
        rows.append(members)
        tables.append(table)
        deleted.append(deleted_rows(base, manifest["shards"][s]))
    return LoadedIndex(version=version, indexes=indexes, rows=rows, shard_metadata=tables, manifest=manifest,
                       deleted=deleted)


def _load_shard(root: str, base: str, manifest: dict, entry: dict):
    """(index, rows, metadata) of one shard entry, checked: its files (in its `dir`'s folder when it shares
    another version's), then its delta added."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    faiss = import_faiss()
    folder = version_dir(root, entry["dir"]) if entry.get("dir") else base
    uri = storage.join(folder, entry["file"])
    with storage.local_copy(uri) as path:  # streamed to a temp file from S3; read in place locally
        if storage.file_sha256(path) != entry["sha256"]:
            raise FastslowError(f"{uri}: checksum does not match the manifest (corrupted or replaced)")
        index = faiss.read_index(path)
    members = np.load(io.BytesIO(_checked(storage.join(folder, entry["rows_file"]), entry["rows_sha256"])),
                      allow_pickle=False)
    if index.d != manifest["dim"]:
        raise FastslowError(f"{folder}/{entry['file']}: dimension {index.d}, manifest says {manifest['dim']}")
    if index.ntotal != entry["count"] or len(members) != entry["count"]:
        raise FastslowError(f"{folder}/{entry['file']}: holds {index.ntotal} vectors and {len(members)} rows, "
                            f"manifest says {entry['count']}")
    if "metadata_file" in entry:
        table = pq.read_table(pa.BufferReader(_checked(storage.join(folder, entry["metadata_file"]),
                                                       entry["metadata_sha256"])))
        where = f"{folder}/{entry['metadata_file']}"
    else:
        table, where = _whole_metadata(folder, manifest).take(members), f"{folder}/{manifest['metadata']['file']}"
    if table.num_rows != entry["count"]:
        raise FastslowError(f"{where}: {table.num_rows} rows, manifest says {entry['count']}")
    vectors, added, more = read_delta(base, entry, manifest["dim"])
    if more is not None:
        add_rows(index, np.ascontiguousarray(vectors, dtype=np.float32))
        members = np.concatenate([members, added])
        table = pa.concat_tables([table, more.cast(table.schema)])
    return index, members, table


def read_delta(base: str, entry: dict, dim: int):
    """(vectors, rows, metadata table) of a shard entry's delta in the version folder `base`, checked against
    the manifest; (empty, empty, None) when it has none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    delta = entry.get("delta")
    if not delta:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.int64), None
    vectors = np.load(io.BytesIO(_checked(storage.join(base, delta["vectors_file"]), delta["vectors_sha256"])),
                      allow_pickle=False)
    added = np.load(io.BytesIO(_checked(storage.join(base, delta["rows_file"]), delta["rows_sha256"])),
                    allow_pickle=False)
    more = pq.read_table(pa.BufferReader(_checked(storage.join(base, delta["metadata_file"]),
                                                  delta["metadata_sha256"])))
    if not len(vectors) == len(added) == more.num_rows == delta["count"]:
        raise FastslowError(f"{base}/{delta['vectors_file']}: {len(vectors)} vectors, {len(added)} rows, "
                            f"{more.num_rows} metadata rows; manifest says {delta['count']}")
    return vectors, added, more


def deleted_rows(base: str, entry: dict) -> np.ndarray:
    """The rows a shard entry deletes (in the version folder `base`), checked against the manifest."""
    gone = entry.get("deleted")
    if not gone:
        return np.zeros(0, np.int64)
    rows = np.load(io.BytesIO(_checked(storage.join(base, gone["file"]), gone["sha256"])), allow_pickle=False)
    if len(rows) != gone["count"]:
        raise FastslowError(f"{base}/{gone['file']}: {len(rows)} rows, manifest says {gone['count']}")
    return rows


def _whole_metadata(base: str, manifest: dict):
    """The one metadata table of a version written before per-shard metadata, checked."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    entry = manifest["metadata"]
    table = pq.read_table(pa.BufferReader(_checked(storage.join(base, entry["file"]), entry["sha256"])))
    if table.num_rows != entry["count"] or table.num_rows != manifest["items"]:
        raise FastslowError(f"{base}/{entry['file']}: {table.num_rows} rows, manifest says {manifest['items']}")
    return table
