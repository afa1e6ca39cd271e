"""References to pretrained models that travel between nodes: a local folder, a hub id (with a revision), or an
s3:// prefix, resolved to a local folder; and the sha256 of its weight files.

An s3:// prefix is downloaded once per node into FASTSLOW_CACHE (default ~/.cache/fastslow)/pretrained/, written
atomically (a half-written copy is never used) and fetched again when the prefix's files or sizes change. A hub id
comes from the local Hugging Face cache; it is downloaded only where the hub is online (HF_HUB_OFFLINE unset).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastslow import storage
from fastslow.errors import FastslowError

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# What a model folder needs from the hub: configs, weights, tokenizer files (not other frameworks' weights).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
LISTING = ".fastslow-listing.json"  # in a downloaded copy: the files and sizes it was made from


@dataclass
class Resolved:
    """A reference resolved to a local folder, and where it came from (for a manifest's provenance)."""

    path: Path
    source: dict = field(default_factory=dict)


def cache_root() -> Path:
    """Where this node keeps downloaded pretrained models."""
    return Path(os.environ.get("FASTSLOW_CACHE") or Path.home() / ".cache" / "fastslow")


def resolve(ref: str, revision: str | None = None) -> Resolved:
    """A local folder for `ref`: a folder as is, an s3:// prefix downloaded (once), a hub id from the HF cache."""
    if not ref:
        raise FastslowError("pretrained model: the reference is empty (a folder, a hub id or an s3:// prefix)")
    if revision and (storage.is_s3(ref) or Path(ref).exists()):
        raise FastslowError(f"{ref}: --revision applies to hub ids only, not to a folder or an s3:// prefix")
    if storage.is_s3(ref):
        return Resolved(_download(ref), {"kind": "s3", "uri": ref.rstrip("/")})
    local = Path(ref).expanduser()
    if local.is_dir():
        return Resolved(local, {"kind": "folder", "name": local.resolve().name})
    if local.exists():
        raise FastslowError(f"{ref}: a file, not a model folder")
    if ref.startswith(("/", ".", "~")) or os.sep + os.sep in ref or ref.count("/") > 1:
        raise FastslowError(f"{ref}: no such folder")
    return _from_hub(ref, revision)


def local_path(ref: str) -> str:
    """`resolve(ref).path` as a string: what `from_pretrained` takes."""
    return str(resolve(ref).path)


def _from_hub(repo_id: str, revision: str | None) -> Resolved:
    from huggingface_hub import constants, snapshot_download

    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=offline, allow_patterns=HUB_PATTERNS)
    except Exception as e:  # not cached, no such repo or revision, an invalid id: all one answer to the user
        where = "in the local Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "on the hub"
        first = str(e).strip().splitlines()[0].split(". ")[0][:200] if str(e).strip() else type(e).__name__
        raise FastslowError(f"{repo_id}{'@' + revision if revision else ''}: not a local folder, and not found as a "
                            f"hub id {where} ({first})") from None
    # Snapshot folders are named by commit: the exact weights, whatever branch or tag `revision` named.
    return Resolved(Path(path), {"kind": "hub", "id": repo_id, "revision": revision or "main",
                                 "commit": Path(path).name})


def _listing(prefix: str) -> dict[str, int]:
    """{relative name: size} of the files under an s3:// prefix."""
    base = prefix.rstrip("/") + "/"
    out = {}
    for uri in storage.list_files(prefix):
        name = uri[len(base):]
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise FastslowError(f"{uri}: an object name that cannot be a file in a local folder")
        out[name] = storage.object_size(uri)
    return out


def _download(prefix: str) -> Path:
    """The local copy of an s3:// prefix, downloaded unless this node has one of the same files and sizes."""
    listing = _listing(prefix)
    if not listing:
        raise FastslowError(f"{prefix}: no files under this prefix")
    final = cache_root() / "pretrained" / hashlib.sha256(prefix.rstrip("/").encode()).hexdigest()[:32]
    marker = final / LISTING
    if marker.is_file() and json.loads(marker.read_text()) == listing:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        for name in listing:
            storage.download_file(storage.join(prefix, name), str(tmp / name))
        (tmp / LISTING).write_text(json.dumps(listing, sort_keys=True))
        if final.exists():  # an older copy (the prefix changed): moved aside, then replaced
            stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=final.parent))
            os.replace(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process on this node finished the same download first
            if not (marker.is_file() and json.loads(marker.read_text()) == listing):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def weights_sha256(folder: str | os.PathLike) -> dict[str, str]:
    """{file name: sha256} of a model folder's weight files; FastslowError if it has none."""
    folder = Path(folder)
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not found:
        raise FastslowError(f"{folder}: no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    return {p.relative_to(folder).as_posix(): storage.file_sha256(p) for p in found}


def verify_weights(folder: str | os.PathLike, expected: dict[str, str]) -> None:
    """Refuse a folder whose weight files differ from `expected` ({file name: sha256}), naming the first that does."""
    found = weights_sha256(folder)
    for name in sorted(set(found) | set(expected)):
        if found.get(name) != expected.get(name):
            got = (found.get(name) or "missing")[:16]
            raise FastslowError(f"{Path(folder) / name}: sha256 {got}... differs from the expected "
                                f"{(expected.get(name) or 'none')[:16]}... (changed weights?)")
