"""Index versions: a folder per build (local or s3://), its manifest written last, and a CURRENT pointer.

    <root>/versions/<version>/shard-000.faiss, shard-000.rows.npy, ..., metadata.parquet, manifest.json
    <root>/CURRENT                      the name of the live version

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
from fastslow.index.shards import IndexSpec, import_faiss

FORMAT = "fastslow-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
METADATA = "metadata.parquet"


def version_dir(root: str, version: str) -> str:
    return storage.join(root, "versions", version)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def write_version(root: str, version: str, indexes: list, rows: list[np.ndarray], metadata, spec: IndexSpec,
                  model: dict) -> dict:
    """Write a complete version (shards, row maps, metadata table, then the manifest); returns the manifest.

    `metadata`: a pyarrow Table with one row per item in global row order (an `id` column at least).
    `model`: the identity of the model that embedded the items (checkpoint URI and weights sha256).
    """
    faiss = import_faiss()
    import pyarrow.parquet as pq

    base = version_dir(root, version)
    if storage.exists(storage.join(base, MANIFEST)):
        raise FastslowError(f"{base}: version {version!r} already exists; versions are never overwritten")
    dims = {ix.d for ix in indexes}
    if len(dims) != 1:
        raise FastslowError(f"write_version: shards of different dimensions {sorted(dims)}")
    shards = []
    for s, (index, members) in enumerate(zip(indexes, rows)):
        rows_data = _npy_bytes(np.asarray(members, dtype=np.int64))
        name = f"shard-{s:03d}"
        # Through a local file, uploaded in parts: a large shard is never held twice (index + its bytes).
        with tempfile.TemporaryDirectory(prefix="fastslow-shard-") as tmp:
            path = os.path.join(tmp, f"{name}.faiss")
            faiss.write_index(index, path)
            digest = storage.file_sha256(path)
            storage.upload_file(path, storage.join(base, f"{name}.faiss"))
        storage.write_bytes(storage.join(base, f"{name}.rows.npy"), rows_data)
        shards.append({"file": f"{name}.faiss", "sha256": digest, "rows_file": f"{name}.rows.npy",
                       "rows_sha256": _sha256(rows_data), "count": int(index.ntotal)})
    buf = io.BytesIO()
    pq.write_table(metadata, buf)
    meta = buf.getvalue()
    storage.write_bytes(storage.join(base, METADATA), meta)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dim": dims.pop(),
                "metric": spec.metric, "factory": spec.factory, "items": int(metadata.num_rows), "shards": shards,
                "metadata": {"file": METADATA, "sha256": _sha256(meta), "count": int(metadata.num_rows)},
                "model": model}
    if sum(s["count"] for s in shards) != manifest["items"]:
        raise FastslowError(f"write_version: shards hold {sum(s['count'] for s in shards)} vectors but the "
                            f"metadata has {manifest['items']} rows")
    # Written last: a version folder with a manifest is complete.
    storage.write_text(storage.join(base, MANIFEST), json.dumps(manifest, indent=2))
    return manifest


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
    """A verified index version: FAISS shards, each shard's global rows, the metadata table, the manifest."""

    version: str
    indexes: list
    rows: list[np.ndarray]
    metadata: object  # pyarrow Table
    manifest: dict

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])


def _checked(uri: str, expected: str) -> bytes:
    data = storage.read_bytes(uri)
    if _sha256(data) != expected:
        raise FastslowError(f"{uri}: checksum does not match the manifest (corrupted or replaced)")
    return data


def load_version(root: str, version: str | None = None, shards: list[int] | None = None,
                 expect_dim: int | None = None, expect_model_sha256: str | None = None) -> LoadedIndex:
    """Load a version (default: CURRENT), only `shards` if given, after verifying it against its manifest."""
    faiss = import_faiss()
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
    indexes, rows = [], []
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
        indexes.append(index)
        rows.append(members)
    meta_entry = manifest["metadata"]
    metadata = pq.read_table(io.BytesIO(_checked(storage.join(base, meta_entry["file"]), meta_entry["sha256"])))
    if metadata.num_rows != meta_entry["count"] or metadata.num_rows != manifest["items"]:
        raise FastslowError(f"{base}/{meta_entry['file']}: {metadata.num_rows} rows, manifest says {manifest['items']}")
    return LoadedIndex(version=version, indexes=indexes, rows=rows, metadata=metadata, manifest=manifest)
