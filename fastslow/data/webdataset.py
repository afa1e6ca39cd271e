"""webdataset tar shards as img2dataset writes them: `{key}.jpg|png|mp4...`, `{key}.txt`, `{key}.json`."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator

from fastslow import storage
from fastslow.data.decode import media_from_extension
from fastslow.data.registry import ShardedReader
from fastslow.data.types import ReadReport, Sample


def _key_and_ext(name: str) -> tuple[str, str]:
    """webdataset convention: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class WebDatasetReader(ShardedReader):
    """Streams each shard (never held whole, also on S3); `Sample.data` holds the media bytes, and `offset`/`size`
    where they lie in the shard, so one item can be read again later with a ranged read.

    The caption is the whole `.txt` member; `.json` metadata goes to `Sample.meta`. A truncated shard
    is reported once (the rest of that shard is lost) and reading goes on with the next shard; so is an
    empty shard and a missing one (a brace pattern can name shards that are not there).
    """

    def __init__(self, shard_uris: list[str]):
        super().__init__(shard_uris, "webdataset")

    def shard_samples(self, shard: str, report: ReadReport) -> Iterator[Sample]:
        group: dict[str, tuple[bytes, int, int]] = {}  # ext -> (bytes, offset, size)
        key: str | None = None
        seen: set[str] = set()
        count = report.read
        try:
            stream = storage.open_read(shard)
        except storage.MissingFileError:
            report.read += 1
            report.skip(storage.basename(shard), shard, "missing shard (no such file)")
            return
        with stream:
            try:
                tar = tarfile.open(fileobj=stream, mode="r|*")
            except (tarfile.TarError, EOFError, OSError) as e:
                report.read += 1
                report.skip(storage.basename(shard), shard, f"not a tar file ({_short(e)})")
                return
            try:
                for member in tar:
                    if not member.isfile():
                        continue
                    member_key, ext = _key_and_ext(member.name)
                    if member_key != key:
                        if key is not None:
                            yield from self._finish(shard, key, group, report, seen)
                        key, group = member_key, {}
                    if ext == "txt" or ext == "json" or media_from_extension("x." + ext) is not None:
                        # Streaming mode: a member's bytes must be read before moving on to the next.
                        group[ext] = (tar.extractfile(member).read(), member.offset_data, member.size)
                # tarfile ends quietly when the data stops at or inside a header; a whole archive
                # ends with a full (zero) block read past the last member.
                if tar.fileobj.tell() < tar.offset + tarfile.BLOCKSIZE:
                    raise EOFError("no end-of-archive block")
            except (tarfile.TarError, EOFError, OSError) as e:
                report.read += 1
                lost = key if key is not None else storage.basename(shard)
                report.skip(lost, shard, f"truncated tar ({_short(e)}): this item and the rest of the shard lost")
                return
            if key is not None:
                yield from self._finish(shard, key, group, report, seen)
        if report.read == count:
            report.read += 1
            report.skip(storage.basename(shard), shard, "empty shard: no items")

    def _finish(self, shard: str, key: str, group: dict[str, tuple[bytes, int, int]], report: ReadReport,
                seen: set[str]):
        report.read += 1
        media_ext = next((e for e in group if e not in ("txt", "json")), None)
        uri = f"{shard}#{key}.{media_ext or 'txt'}"
        caption = group["txt"][0].decode("utf-8", errors="replace").strip() if "txt" in group else ""
        meta, bad_meta = _meta(group["json"][0]) if "json" in group else ({}, "")
        if key in seen:
            report.skip(key, uri, "duplicate key in this shard")
        elif media_ext is None:
            report.skip(key, uri, "no media member")
        elif bad_meta:
            report.skip(key, uri, bad_meta)
        elif not caption:
            report.skip(key, uri, "no caption")
        else:
            seen.add(key)
            data, offset, size = group[media_ext]
            yield Sample(id=key, media=media_from_extension("x." + media_ext), uri=uri, captions=[caption],
                         data=data, meta=meta, offset=offset, size=size)
            return
        seen.add(key)


def _short(e: BaseException) -> str:
    return (str(e) or type(e).__name__)[:80]


def _meta(raw: bytes) -> tuple[dict, str]:
    """The `.json` member as a dict, and "" or why it is unusable (the item is then reported)."""
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}, "metadata .json is not JSON"
    return (meta, "") if isinstance(meta, dict) else ({}, "metadata .json is not a JSON object")
