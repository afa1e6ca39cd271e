"""Items that live inside shard files: their `CONTAINER#MEMBER` locations, read back one at a time, and brace
patterns of shard names (`s3://bucket/laion/{00000..00999}.tar`).

A tar member is read with one ranged read of its recorded byte range (an S3 ranged GET, or a seek), never
the whole shard; without a recorded range (a location from elsewhere) the tar is streamed up to the member.
A Parquet item (img2dataset's `parquet` layout) is read from its row group only.
"""

from __future__ import annotations

import re
import tarfile

from fastslow import storage
from fastslow.errors import DecodeError, FastslowError

CONTAINERS = (".tar", ".parquet")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def split_member(uri: str) -> tuple[str, str] | None:
    """(container, member) of a `CONTAINER#MEMBER` location; None for a plain file. The container is the one
    ending in .tar or .parquet just before the `#` (file names may hold `#` themselves)."""
    for ext in CONTAINERS:
        at = uri.rfind(ext + "#")
        if at >= 0:
            cut = at + len(ext)
            return uri[:cut], uri[cut + 1 :]
    return None


def member_uri(container: str, member: str) -> str:
    return f"{container}#{member}"


def read_member(uri: str, offset: int | None = None, size: int | None = None) -> bytes:
    """The bytes of the member at `uri` (`CONTAINER#MEMBER`): a ranged read when its range is known.
    A member not found is a DecodeError; an unreachable store raises as storage does."""
    container, member = split_member(uri) or (uri, "")
    if container.endswith(".parquet"):
        from fastslow.data.img2dataset_parquet import read_parquet_item

        return read_parquet_item(container, member)
    if offset is not None and size is not None:
        data = storage.read_range(container, int(offset), int(size))
        if len(data) != int(size):
            raise DecodeError(f"truncated member ({len(data)} of {size} bytes at offset {offset})")
        return data
    return _scan_tar(container, member)


def _scan_tar(container: str, member: str) -> bytes:
    """A member found by streaming the tar from its start (no recorded byte range)."""
    with storage.open_read(container) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for info in tar:
                    if info.name == member and info.isfile():
                        return tar.extractfile(info).read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DecodeError(f"unreadable tar ({str(e)[:80] or type(e).__name__})") from None
    raise DecodeError(f"no member {member!r} in {storage.basename(container)}")


def expand_braces(pattern: str) -> list[str]:
    """`{00000..00012}` ranges expanded (zero padding kept, several ranges multiply), as webdataset and
    img2dataset name shards; a pattern without one is itself."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    if int(last) < int(first):
        raise FastslowError(f"{pattern}: the range {{{first}..{last}}} is empty (it runs backwards)")
    if int(last) - int(first) >= 1_000_000:
        raise FastslowError(f"{pattern}: the range {{{first}..{last}}} names more than a million shards")
    width = len(first) if first.startswith("0") else 0
    head, tail = pattern[: match.start()], pattern[match.end() :]
    out = []
    for n in range(int(first), int(last) + 1):
        out += expand_braces(f"{head}{n:0{width}d}{tail}")
    return out


def has_braces(path: str) -> bool:
    return _BRACE.search(path) is not None
