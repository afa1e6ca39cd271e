"""A bare folder (or S3 prefix) of images and videos, with no annotations: what people index.

Every file with an image or video extension, found recursively, is a sample; its id is its
path relative to the folder (unique by construction), its caption a sidecar `<name>.txt` when
there is one. Files with other extensions are reported, not silently ignored; hidden files and
folders (names starting with a dot) and desktop clutter (.DS_Store, Thumbs.db) are not items.
"""

from __future__ import annotations

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
            if low.endswith(".txt") and uri[:-4] in media_stems:
                continue  # a sidecar caption, read with its media file
            report.read += 1
            media = media_from_extension(rel)
            if media is None:
                report.skip(rel, uri, "not an image or video file (unknown extension)")
                continue
            caption_uri = uri.rpartition(".")[0] + ".txt"
            captions = [storage.read_text(caption_uri).strip()] if caption_uri in names else []
            yield Sample(id=rel, media=media, uri=uri, captions=[c for c in captions if c])

