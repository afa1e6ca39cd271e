"""A seekable, read-only file over a local file or an S3 object, read by ranged reads (fastslow.storage).

For libraries that seek about a big file and read only parts of it (PyAV reading a video's index, then
a few keyframes): each miss fetches one range through `storage.read_range` (an S3 ranged GET, or a seek
locally) of at least `read_ahead` bytes, so the many small reads a demuxer makes cost one request per block.
The last KEPT_BLOCKS blocks are kept (a demuxer goes back and forth: the header, the index at the end, the
first frames), so memory stays at a few blocks whatever the file's size.
"""

from __future__ import annotations

import io
import os

from fastslow.storage_s3 import MissingFileError, _s3_errors, is_s3, s3_client, split_s3

# About what an S3 GET moves in its first-byte latency: fewer requests, little fetched beyond the need.
DEFAULT_READ_AHEAD = 2**20
KEPT_BLOCKS = 4


def object_size(uri: str) -> int:
    """Size in bytes of a local file or an S3 object (a HEAD request); MissingFileError when it is not there."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    try:
        info = os.stat(uri)
    except (FileNotFoundError, NotADirectoryError):
        raise MissingFileError(f"{uri}: no such file") from None
    if not os.path.isfile(uri):
        raise MissingFileError(f"{uri}: no such file")
    return info.st_size


class RangedReader(io.RawIOBase):
    """Read-only, seekable binary file over `uri`; `bytes_fetched` and `fetches` count what was really read."""

    def __init__(self, uri: str, read_ahead: int = DEFAULT_READ_AHEAD, size: int | None = None):
        super().__init__()
        self.uri = uri
        self.read_ahead = max(1, int(read_ahead))
        self.size = object_size(uri) if size is None else int(size)
        self.bytes_fetched = 0
        self.fetches = 0
        self._pos = 0
        self._blocks: list[tuple[int, bytes]] = []  # (offset, bytes) of the blocks kept, the last used last

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position (no request: bytes are fetched when read); past the end is allowed, as for files."""
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence!r}")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes from the position (all the rest for -1): from the kept blocks, else by a ranged read."""
        self._checkClosed()
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        parts, at = [], self._pos
        while at < end:
            part = self._kept(at, end) or self._fetch(at, end)
            if not part:  # the file is shorter than it was when opened
                break
            parts.append(part)
            at += len(part)
        data = b"".join(parts)
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        self._blocks = []
        super().close()

    def _kept(self, start: int, end: int) -> bytes:
        """The part of [start, end) a kept block holds from `start` on (b"" when none holds `start`)."""
        for i in range(len(self._blocks) - 1, -1, -1):
            at, data = self._blocks[i]
            if at <= start < at + len(data):
                self._blocks.append(self._blocks.pop(i))  # the last used goes last
                return data[start - at : end - at]
        return b""

    def _fetch(self, start: int, end: int) -> bytes:
        """Fetch [start, end) and the read-ahead beyond it (never past the file's end) as a new kept block, the
        least recently used one dropped past KEPT_BLOCKS; the part of [start, end) it holds."""
        from fastslow import storage  # here, not at the top: storage imports this module

        data = storage.read_range(self.uri, start, min(max(end - start, self.read_ahead), self.size - start))
        self.fetches += 1
        self.bytes_fetched += len(data)
        self._blocks = [*self._blocks[-(KEPT_BLOCKS - 1) :], (start, data)] if data else self._blocks
        return data[: end - start]
