"""img2dataset's `parquet` output layout: `{shard}.parquet` files whose rows hold the image bytes in a column named
after the encode format (`jpg`), the caption in `caption`, and img2dataset's fields (`key`, `url`, `status`,
`width`, `height`, `sha256`, ...). Rows of failed downloads (no image) are reported, never silently dropped.

Each file is a shard (read whole by the worker that embeds it, a row group at a time); one item is read back
from its row group alone (`read_parquet_item`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

from fastslow import storage
from fastslow.data.decode import media_from_extension
from fastslow.data.registry import ShardedReader
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import DecodeError

IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp")
_PLAIN = (str, int, float, bool, type(None))


def image_column(schema) -> str | None:
    """The image bytes column of an img2dataset Parquet schema; None when the file is not one (a manifest, or the
    metadata-only Parquet img2dataset writes beside tars)."""
    import pyarrow as pa

    if "key" not in schema.names:
        return None
    for name in IMAGE_COLUMNS:
        if name in schema.names and (pa.types.is_binary(schema.field(name).type)
                                     or pa.types.is_large_binary(schema.field(name).type)):
            return name
    return None


def _parquet_file(uri: str):
    """A pyarrow ParquetFile over a local path or an S3 object; only what is asked for is read (the footer here,
    then column chunks). A file that is not Parquet is a DecodeError, a missing one a MissingFileError.

    On S3 through storage's ranged reads rather than pyarrow's own S3 filesystem: they ride out an outage with
    storage's retries and then raise StorageUnavailableError, where pyarrow's S3 errors are plain OSErrors that
    could not be told from a corrupt file (a good shard would be reported as bad)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = storage.open_seekable(uri) if storage.is_s3(uri) else uri
    try:
        return pq.ParquetFile(source)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise storage.MissingFileError(f"{uri}: no such file") from None
    except (OSError, pa.ArrowException) as e:
        raise DecodeError(f"not a readable Parquet file ({_short(e)})") from None


def is_img2dataset_parquet(uri: str) -> bool:
    """Whether the Parquet file at `uri` is in img2dataset's parquet layout (reads its footer only)."""
    try:
        return image_column(_parquet_file(uri).schema_arrow) is not None
    except (DecodeError, storage.MissingFileError):
        return False


class Img2DatasetParquetReader(ShardedReader):
    """Samples of img2dataset Parquet shards; no splits. `data` holds the image bytes; `meta` every other column."""

    def __init__(self, files: list[str]):
        super().__init__(files, "img2dataset parquet")

    def shard_samples(self, shard: str, report: ReadReport) -> Iterator[Sample]:
        name = storage.basename(shard)
        try:
            pf = _parquet_file(shard)
        except (DecodeError, storage.MissingFileError) as e:
            report.read += 1
            missing = isinstance(e, storage.MissingFileError)
            report.skip(name, shard, "missing shard (no such file)" if missing else str(e))
            return
        column = image_column(pf.schema_arrow)
        if column is None:
            report.read += 1
            report.skip(name, shard, "not img2dataset parquet output (no key and image columns)")
            return
        seen: set[str] = set()
        for group in range(pf.num_row_groups):
            rows = _row_group(pf, group, shard, report)
            for row in rows:
                report.read += 1
                sample = _sample(shard, row, column, report, seen)
                if sample is not None:
                    yield sample
        if pf.metadata.num_rows == 0:
            report.read += 1
            report.skip(name, shard, "empty shard: no items")


def _row_group(pf, group: int, shard: str, report: ReadReport) -> list[dict]:
    """The rows of one row group; a corrupt one is reported (each of its keys when the key column still reads,
    else the group) and reading goes on with the next: row groups are independent."""
    import pyarrow as pa

    try:
        return pf.read_row_group(group).to_pylist()
    except (OSError, pa.ArrowException) as e:
        reason = f"unreadable row group {group} ({_short(e)})"
    try:
        keys = pf.read_row_group(group, columns=["key"]).column("key").to_pylist()
    except (OSError, pa.ArrowException):
        keys = [f"{storage.basename(shard)}#row-group-{group}"]
        reason += f": its {pf.metadata.row_group(group).num_rows} rows lost"
    for key in keys:
        report.read += 1
        report.skip(str(key), f"{shard}#{key}", reason)
    return []


def _sample(shard: str, row: dict, column: str, report: ReadReport, seen: set[str]) -> Sample | None:
    """The sample of one row, or None when the row is reported (the same reasons as webdataset's tars)."""
    key = str(row.get("key") or "")
    uri = f"{shard}#{key}"
    image = row.pop(column, None)
    caption = str(row.get("caption") or row.get("txt") or "").strip()
    if not key:
        report.skip(key, uri, "no key")
    elif key in seen:
        report.skip(key, uri, "duplicate key in this shard")
    elif image is None:
        report.skip(key, uri, f"no image ({row.get('status') or 'no status'}: {row.get('error_message') or '-'})")
    elif not caption:
        report.skip(key, uri, "no caption")
    else:
        seen.add(key)
        meta = {k: _jsonable(v) for k, v in row.items()}
        return Sample(id=key, media=media_from_extension("x." + column), uri=uri, captions=[caption], data=image,
                      meta=meta)
    seen.add(key)
    return None


def _jsonable(value):
    """A Parquet value as JSON holds it (metadata is stored as JSON): extra input columns img2dataset copies
    (save_additional_columns) may be timestamps, decimals or bytes."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _short(e: BaseException) -> str:
    return (str(e).splitlines()[0] if str(e) else type(e).__name__)[:100]


def read_parquet_item(container: str, key: str) -> bytes:
    """The image bytes of item `key` of a parquet-layout shard: the key column, then one row group's image cell."""
    import pyarrow as pa

    pf = _parquet_file(container)
    column = image_column(pf.schema_arrow)
    if column is None:
        raise DecodeError(f"{storage.basename(container)} is not img2dataset parquet output")
    try:
        for group in range(pf.num_row_groups):
            keys = pf.read_row_group(group, columns=["key"]).column("key").to_pylist()
            if key in keys:
                image = pf.read_row_group(group, columns=[column]).column(column)[keys.index(key)].as_py()
                if image is None:
                    raise DecodeError("no image (a failed download)")
                return image
    except (OSError, pa.ArrowException) as e:
        raise DecodeError(f"unreadable Parquet ({_short(e)})") from None
    raise DecodeError(f"no item {key!r} in {storage.basename(container)}")
