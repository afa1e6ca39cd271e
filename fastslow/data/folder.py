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
import re
from collections.abc import Iterator

from fastslow import storage
from fastslow.data.decode import media_from_extension
from fastslow.data.registry import DatasetReader
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import FastslowError

IGNORED_NAMES = (".ds_store", "thumbs.db")
_SHARD_STATS = re.compile(r"\d+_stats\.json")  # img2dataset names shards by zero-padded numbers


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
        names, folders = set(files), {f.rpartition("/")[0] for f in files}
        media_stems = {f.rpartition(".")[0] for f in files if media_from_extension(f) is not None}
        for uri in files:
            rel = self._relative(uri)
            low = rel.lower()
            if low.rpartition("/")[2] in IGNORED_NAMES or low.startswith(".") or "/." in low:
                continue
            if (low.endswith(".txt") and uri[:-4] in media_stems) or (low.endswith(".json") and uri[:-5] in media_stems):
                continue  # a sidecar caption or metadata, read with its media file
            if _img2dataset_bookkeeping(uri, names, folders):
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
            if isinstance(meta, str):
                report.skip(rel, uri, meta)
                continue
            yield Sample(id=rel, media=media, uri=uri, captions=[c for c in captions if c], meta=meta)


def _sidecar_meta(uri: str) -> dict | str:
    """A sidecar `.json` as a dict, else why it cannot be the item's metadata (the item is reported)."""
    try:
        meta = json.loads(storage.read_text(uri))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "metadata .json is not JSON"
    return meta if isinstance(meta, dict) else "metadata .json is not a JSON object"


def _img2dataset_bookkeeping(uri: str, names: set[str], folders: set[str]) -> bool:
    """img2dataset's files layout writes `{shard}.parquet` (every sample's metadata, failed ones too) and
    `{shard}_stats.json` beside each `{shard}/` folder: records of the download, not items, and not unknown
    files either (reporting them would flood the report with one pair per shard). A shard whose downloads all
    failed has an empty folder, which a listing of files does not show: its stats file tells it apart."""
    base = uri.rpartition("/")[2]
    if _SHARD_STATS.fullmatch(base):
        return True
    if not base.lower().endswith(".parquet"):
        return False
    shard = uri[: -len(".parquet")]
    return shard in folders or f"{shard}_stats.json" in names

