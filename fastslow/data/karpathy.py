"""Flickr30K and COCO in Karpathy's split format (`dataset_flickr30k.json`, `dataset_coco.json`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from fastslow import storage
from fastslow.data.registry import DatasetReader, parse_json
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import FastslowError

# Karpathy's "restval" images (COCO val2014 images outside his 5k val/test) are training images.
SPLIT_ALIASES = {"restval": "train"}


def _captions(entry: dict) -> list[str]:
    sentences = entry.get("sentences")
    if not isinstance(sentences, list):
        return []
    raws = (s.get("raw") if isinstance(s, dict) else None for s in sentences)
    return [r.strip() for r in raws if isinstance(r, str) and r.strip()]


class KarpathyReader(DatasetReader):
    """`{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}` plus an image folder.

    id = file stem, prefixed by `filepath` when present (COCO: `val2014/COCO_val2014_...`);
    uri = image_root/filepath?/filename. Split "restval" is read as "train".
    """

    def __init__(self, json_uri: str, image_root: str):
        self.json_uri = json_uri
        self.image_root = image_root
        self.source = json_uri
        self._images: list | None = None

    def set_index(self, parsed) -> None:
        """Use an already parsed JSON document instead of reading the file again."""
        if not isinstance(parsed, dict) or not isinstance(parsed.get("images"), list):
            raise FastslowError(f"{self.json_uri}: expected a JSON object with an 'images' list")
        self._images = parsed["images"]

    def _index(self) -> list:
        if self._images is None:
            self.set_index(parse_json(self.json_uri))
        return self._images

    def splits(self) -> list[str]:
        found = {_split_of(e) for e in self._index() if isinstance(e, dict)}
        return sorted(s for s in found if s is not None)

    def samples(self, split: str | None, report: ReadReport) -> Iterator[Sample]:
        self.check_split(split)
        seen: set[str] = set()
        for pos, entry in enumerate(self._index()):
            entry_split = _split_of(entry) if isinstance(entry, dict) else None
            fields = _fields_for(self.image_root, entry)
            # Duplicates are judged in file order over the whole file, whichever split is read.
            first_time = fields is not None and fields[0] not in seen
            if fields is not None:
                seen.add(fields[0])
            if split is not None and entry_split is not None and entry_split != split:
                continue
            report.read += 1
            if fields is None:
                reason = "entry without a filename" if isinstance(entry, dict) else "entry is not a JSON object"
                report.skip(f"#{pos}", self.json_uri, reason)
                continue
            item_id, uri = fields
            if entry_split is None:
                report.skip(item_id, uri, "missing split")
            elif not first_time:
                report.skip(item_id, uri, "duplicate id")
            elif not (captions := _captions(entry)):
                report.skip(item_id, uri, "no captions")
            else:
                meta = {k: entry[k] for k in ("imgid", "cocoid", "sentids") if k in entry}
                yield Sample(id=item_id, media="image", uri=uri, captions=captions, split=entry_split, meta=meta)


def _split_of(entry: dict) -> str | None:
    split = entry.get("split")
    if not isinstance(split, str) or not split:
        return None
    return SPLIT_ALIASES.get(split, split)


def _fields_for(reader_root: str, entry) -> tuple[str, str] | None:
    """(id, uri) of an entry, or None when it has no usable filename."""
    if not isinstance(entry, dict):
        return None
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        return None
    stem = os.path.splitext(filename)[0]
    filepath = entry.get("filepath")
    if isinstance(filepath, str) and filepath:
        return f"{filepath}/{stem}", storage.join(reader_root, filepath, filename)
    return stem, storage.join(reader_root, filename)
