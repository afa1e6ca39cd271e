"""A plain manifest: CSV, JSONL or Parquet rows of a media URI and its captions."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator

from fastslow import storage
from fastslow.data.decode import media_from_extension
from fastslow.data.registry import DatasetReader
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import FastslowError

URI_COLUMNS = ("uri", "path", "url", "file", "filepath")
CAPTION_COLUMNS = ("captions", "caption")
SUFFIXES = (".csv", ".jsonl", ".parquet")


class _BadLine:
    """A JSONL line that did not parse into an object."""

    def __init__(self, reason: str):
        self.reason = reason


class ManifestReader(DatasetReader):
    """Columns: `uri` (or path/url/file/filepath), `captions` (list, or JSON list string in CSV) or
    `caption` (str), optional `id` (default: file stem), `split`, `media` (image/video, else by extension).

    Relative URIs resolve against `media_root`, else the manifest's folder.
    """

    def __init__(self, uri: str, media_root: str | None = None):
        if not uri.lower().endswith(SUFFIXES):
            raise FastslowError(f"{uri}: manifest must be .csv, .jsonl or .parquet")
        self.uri = uri
        self.source = uri
        self.media_root = media_root if media_root is not None else storage.parent(uri)
        self._rows: list | None = None
        self._columns: set[str] = set()

    def _load(self) -> list:
        if self._rows is None:
            low = self.uri.lower()
            if low.endswith(".csv"):
                rows = self._read_csv()
            elif low.endswith(".jsonl"):
                rows = self._read_jsonl()
            else:
                rows = self._read_parquet()
            if not any(c in self._columns for c in URI_COLUMNS):
                raise FastslowError(f"{self.uri}: no media column (expected one of {', '.join(URI_COLUMNS)})")
            if not any(c in self._columns for c in CAPTION_COLUMNS):
                raise FastslowError(f"{self.uri}: no caption or captions column")
            self._rows = rows
        return self._rows

    def _read_csv(self) -> list:
        text = storage.read_text(self.uri).lstrip("\ufeff")
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            self._columns = set(reader.fieldnames or [])
            return list(reader)
        except csv.Error as e:
            raise FastslowError(f"{self.uri}: not valid CSV ({e})") from None

    def _read_jsonl(self) -> list:
        rows: list = []
        for n, line in enumerate(storage.read_text(self.uri).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                rows.append(_BadLine(f"line {n}: not valid JSON ({e.msg})"))
                continue
            if not isinstance(row, dict):
                rows.append(_BadLine(f"line {n}: not a JSON object"))
                continue
            self._columns.update(row)
            rows.append(row)
        return rows

    def _read_parquet(self) -> list:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(storage.read_bytes(self.uri)))
        except (pa.ArrowException, OSError) as e:
            raise FastslowError(f"{self.uri}: not a readable Parquet file ({str(e)[:120]})") from None
        self._columns = set(table.column_names)
        return table.to_pylist()

    def splits(self) -> list[str]:
        rows = self._load()
        if "split" not in self._columns:
            return []
        return sorted({r["split"] for r in rows if isinstance(r, dict) and isinstance(r.get("split"), str) and r["split"]})

    def samples(self, split: str | None, report: ReadReport) -> Iterator[Sample]:
        rows = self._load()
        self.check_split(split)
        seen: set[str] = set()
        for pos, row in enumerate(rows):
            row_split = row.get("split") if isinstance(row, dict) else None
            row_split = row_split if isinstance(row_split, str) and row_split else None
            if split is not None and row_split != split and not isinstance(row, _BadLine):
                continue
            report.read += 1
            if isinstance(row, _BadLine):
                report.skip(f"#{pos}", self.uri, row.reason)
                continue
            sample, problem = self._sample(row, pos, row_split)
            if problem is not None:
                report.skip(*problem)
            elif sample.id in seen:
                report.skip(sample.id, sample.uri, "duplicate id (ids default to file stems: add an id column)")
            else:
                seen.add(sample.id)
                yield sample

    def _sample(self, row: dict, pos: int, split: str | None):
        """(Sample, None) for a good row, else (None, (id, uri, reason))."""
        raw_uri = next((row[c] for c in URI_COLUMNS if isinstance(row.get(c), str) and row[c].strip()), None)
        raw_id = row.get("id")
        item_id = str(raw_id).strip() if raw_id not in (None, "") and not isinstance(raw_id, (list, dict)) else ""
        if raw_uri is None:
            return None, (item_id or f"#{pos}", self.uri, "no media uri")
        uri = self._resolve(raw_uri.strip())
        item_id = item_id or os.path.splitext(storage.basename(raw_uri.strip()))[0]
        if "://" in uri and not storage.is_s3(uri):
            return None, (item_id, uri, "unsupported URI scheme (local paths and s3:// only)")
        captions, problem = _captions(row)
        if problem:
            return None, (item_id, uri, problem)
        media = row.get("media")
        if media in (None, ""):
            media = media_from_extension(uri)
            if media is None:
                return None, (item_id, uri, "unknown media type (set a media column)")
        elif media not in ("image", "video"):
            return None, (item_id, uri, f"bad media {media!r} (image or video)")
        return Sample(id=item_id, media=media, uri=uri, captions=captions, split=split), None

    def _resolve(self, raw: str) -> str:
        if "://" in raw or os.path.isabs(raw):
            return raw
        return storage.join(self.media_root, raw)


def _captions(row: dict) -> tuple[list[str], str | None]:
    """The row's captions, or a reason they are unusable."""
    value = row.get("captions")
    if isinstance(value, str) and value.strip().startswith("["):
        # CSV cannot hold lists: a `captions` cell may be a JSON-encoded list.
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return [], "captions cell is not a valid JSON list"
    if value in (None, "", []):
        value = row.get("caption")
    if isinstance(value, str):
        value = [value]
    if value is None:
        return [], "no captions"
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        return [], "captions must be strings"
    captions = [c.strip() for c in value if c.strip()]
    return (captions, None) if captions else ([], "no captions")
