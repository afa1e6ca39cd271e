"""VATEX: per-split JSON lists of `{"videoID", "enCap": [...]}` plus a folder of video files."""

from __future__ import annotations

import os
from collections.abc import Iterator

from fastslow import storage
from fastslow.data.registry import DatasetReader, parse_json
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import FastslowError

# Looked for in this order when a video exists under several extensions.
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi")


class VatexReader(DatasetReader):
    """Video `{video_root}/{videoID}.{mp4|webm|mkv|avi}` with the English captions `enCap`.

    The video folder is listed once (not probed per video); a video with no file is reported "missing file".
    """

    def __init__(self, json_uris: dict[str, str], video_root: str):
        if not json_uris:
            raise FastslowError(f"{video_root}: VATEX reader given no split files")
        self.json_uris = dict(json_uris)
        self.video_root = video_root
        uris = list(json_uris.values())
        # One name for logs and progress bars: the file, or the folder holding the split files.
        self.source = uris[0] if len(uris) == 1 else f"{storage.parent(uris[0])} (VATEX, {len(uris)} split files)"
        self._indexes: dict[str, list] = {}
        self._videos: dict[str, str] | None = None

    def set_index(self, split: str, parsed) -> None:
        """Use an already parsed JSON document for `split` instead of reading the file again."""
        if not isinstance(parsed, list):
            raise FastslowError(f"{self.json_uris[split]}: expected a JSON list of {{'videoID', 'enCap'}} entries")
        self._indexes[split] = parsed

    def _index(self, split: str) -> list:
        if split not in self._indexes:
            self.set_index(split, parse_json(self.json_uris[split]))
        return self._indexes[split]

    def splits(self) -> list[str]:
        return list(self.json_uris)

    def _video_files(self) -> dict[str, str]:
        """videoID (path relative to the root, no extension) -> uri, from one listing of the root."""
        if self._videos is None:
            rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
            root = self.video_root.rstrip("/") if storage.is_s3(self.video_root) else self.video_root
            found: dict[str, tuple[int, str]] = {}
            for uri in storage.list_files(root, suffixes=VIDEO_EXTENSIONS):
                rel = uri[len(root) :].lstrip("/" + os.sep).replace(os.sep, "/")
                stem, ext = os.path.splitext(rel)
                r = rank[ext.lower()]
                if stem not in found or r < found[stem][0]:
                    found[stem] = (r, uri)
            self._videos = {stem: uri for stem, (_, uri) in found.items()}
        return self._videos

    def samples(self, split: str | None, report: ReadReport) -> Iterator[Sample]:
        self.check_split(split)
        videos = self._video_files()
        seen: set[str] = set()
        for name in [split] if split is not None else self.splits():
            json_uri = self.json_uris[name]
            for pos, entry in enumerate(self._index(name)):
                report.read += 1
                video_id = entry.get("videoID") if isinstance(entry, dict) else None
                if not isinstance(video_id, str) or not video_id.strip():
                    report.skip(f"{name}#{pos}", json_uri, "entry without a videoID")
                    continue
                uri = videos.get(video_id, storage.join(self.video_root, video_id + ".mp4"))
                caps = entry.get("enCap")
                captions = [c.strip() for c in caps if isinstance(c, str) and c.strip()] if isinstance(caps, list) else []
                if video_id in seen:
                    report.skip(video_id, uri, "duplicate id")
                elif not captions:
                    report.skip(video_id, uri, "no captions")
                elif video_id not in videos:
                    report.skip(video_id, uri, "missing file")
                else:
                    yield Sample(id=video_id, media="video", uri=uri, captions=captions, split=name)
                seen.add(video_id)
