"""A bare folder (or S3 prefix) of images and videos, with no annotations: what people index.

Every file with an image or video extension, found recursively, is a sample; its id is its
path relative to the folder (unique by construction), its caption a sidecar `<name>.txt` when
there is one, its metadata a sidecar `<name>.json` (img2dataset's `files` layout writes both).
Files with other extensions are reported, not silently ignored; hidden files and folders (names
starting with a dot), desktop clutter (.DS_Store, Thumbs.db) and img2dataset's bookkeeping beside
its shard folders (`00000.parquet` next to `00000/`, `00000_stats.json`) are not items.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from fastslow import storage
from fastslow.data.decode import media_from_extension
from fastslow.data.registry import DatasetReader
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import FastslowError

IGNORED_NAMES = (".ds_store", "thumbs.db")


class FolderReader(DatasetReader):
    """Samples of every media file under `root`; no splits."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.source = root

    def _relative(self, uri: str) -> str:
        return uri[len(self.root) :].lstrip("/").lstrip("\\").replace("\\", "/")

    def samples(self, split: str | None, report: ReadReport) -> Iterator[Sample]:
        self.check_split(split)
        files = storage.list_files(self.root)
        if not files:
            raise FastslowError(f"{self.root}: no files found")
        names = set(files)
        media_stems = {f.rpartition(".")[0] for f in files if media_from_extension(f) is not None}
        for uri in files:
            rel = self._relative(uri)
            low = rel.lower()
            if low.rpartition("/")[2] in IGNORED_NAMES or low.startswith(".") or "/." in low:
                continue
            if (low.endswith(".txt") and uri[:-4] in media_stems) or (low.endswith(".json") and uri[:-5] in media_stems):
                continue  # a sidecar caption or metadata, read with its media file
            if _img2dataset_bookkeeping(uri, names):
                continue
            report.read += 1
            media = media_from_extension(rel)
            if media is None:
                report.skip(rel, uri, "not an image or video file (unknown extension)")
                continue
            caption_uri = uri.rpartition(".")[0] + ".txt"
            captions = [storage.read_text(caption_uri).strip()] if caption_uri in names else []
            meta_uri = uri.rpartition(".")[0] + ".json"
            meta = _sidecar_meta(meta_uri) if meta_uri in names else {}
            if meta is None:
                report.skip(rel, uri, "metadata .json is not a JSON object")
                continue
            yield Sample(id=rel, media=media, uri=uri, captions=[c for c in captions if c], meta=meta)


def _sidecar_meta(uri: str) -> dict | None:
    """A sidecar `.json` as a dict; None when it is not a JSON object (the item is reported)."""
    try:
        meta = json.loads(storage.read_text(uri))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _img2dataset_bookkeeping(uri: str, names: set[str]) -> bool:
    """img2dataset's files layout writes `{shard}.parquet` (every sample's metadata, failed ones too) and
    `{shard}_stats.json` beside each `{shard}/` folder: records of the download, not items."""
    low = uri.lower()
    if low.endswith("_stats.json"):
        return True
    if low.endswith(".parquet"):
        folder = uri[: -len(".parquet")] + "/"
        return any(n.startswith(folder) for n in names)
    return False

