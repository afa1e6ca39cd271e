"""img2dataset's `parquet` output layout: `{shard}.parquet` files whose rows hold the image bytes in a column named
after the encode format (`jpg`), the caption in `caption`, and img2dataset's fields (`key`, `url`, `status`,
`width`, `height`, `sha256`, ...). Rows of failed downloads (no image) are reported, never silently dropped.

Each file is a shard (read whole by the worker that embeds it, a row group at a time); one item is read back
from its row group alone (`read_parquet_item`).
"""

from __future__ import annotations

from collections.abc import Iterator

from fastslow import storage
from fastslow.data.registry import ShardedReader
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import DecodeError, FastslowError

IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp")


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
    """A pyarrow ParquetFile over a local path or an S3 object (random access: only the parts read are fetched)."""
    import pyarrow.parquet as pq

    filesystem, path = storage.arrow_filesystem(uri)
    try:
        return pq.ParquetFile(path if filesystem is None else filesystem.open_input_file(path))
    except FileNotFoundError:
        raise storage.MissingFileError(f"{uri}: no such file") from None
    except OSError as e:
        raise FastslowError(f"{uri}: not a readable Parquet file ({str(e)[:100]})") from None


def is_img2dataset_parquet(uri: str) -> bool:
    """Whether the Parquet file at `uri` is in img2dataset's parquet layout (reads its footer only)."""
    try:
        return image_column(_parquet_file(uri).schema_arrow) is not None
    except FastslowError:
        return False


class Img2DatasetParquetReader(ShardedReader):
    """Samples of img2dataset Parquet shards; no splits. `data` holds the image bytes."""

    def __init__(self, files: list[str]):
        super().__init__(files, "img2dataset parquet")

    def shard_samples(self, shard: str, report: ReadReport) -> Iterator[Sample]:
        try:
            pf = _parquet_file(shard)
        except FastslowError as e:
            report.read += 1
            reason = "missing shard (no such file)" if isinstance(e, storage.MissingFileError) else str(e)
            report.skip(storage.basename(shard), shard, reason.removeprefix(f"{shard}: "))
            return
        column = image_column(pf.schema_arrow)
        if column is None:
            report.read += 1
            report.skip(storage.basename(shard), shard, "not img2dataset parquet output (no key and image columns)")
            return
        seen: set[str] = set()
        for group in range(pf.num_row_groups):
            for row in pf.read_row_group(group).to_pylist():
                report.read += 1
                sample = self._sample(shard, row, column, report, seen)
                if sample is not None:
                    yield sample
        if pf.metadata.num_rows == 0:
            report.read += 1
            report.skip(storage.basename(shard), shard, "empty shard: no items")

    @staticmethod
    def _sample(shard: str, row: dict, column: str, report: ReadReport, seen: set[str]) -> Sample | None:
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
            return Sample(id=key, media="image", uri=uri, captions=[caption], data=image, meta=row)
        seen.add(key)
        return None


def read_parquet_item(container: str, key: str) -> bytes:
    """The image bytes of item `key` of a parquet-layout shard: its key column, then one row group's image."""
    pf = _parquet_file(container)
    column = image_column(pf.schema_arrow)
    if column is None:
        raise DecodeError(f"{storage.basename(container)} is not img2dataset parquet output")
    for group in range(pf.num_row_groups):
        keys = pf.read_row_group(group, columns=["key"]).column("key").to_pylist()
        if key in keys:
            image = pf.read_row_group(group, columns=[column]).column(column)[keys.index(key)].as_py()
            if image is None:
                raise DecodeError("no image (a failed download)")
            return image
    raise DecodeError(f"no item {key!r} in {storage.basename(container)}")
