"""Media of indexed items for the search page: images as stored (re-encoded when browsers cannot show them),
a JPEG poster frame for videos.

The caller resolves an item id to its URI through the live index version; here the URI must also lie
inside the collection root that version recorded (local paths after resolving symlinks, s3:// URIs by
prefix), so neither a request nor a crafted dataset entry can reach other files.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections import OrderedDict

from fastslow import storage
from fastslow.data.decode import decode_video, media_from_extension
from fastslow.data.members import member_uri, read_member, split_member
from fastslow.errors import DecodeError, FastslowError

# Image formats served byte for byte; anything else PIL reads is re-encoded as PNG.
BROWSER_IMAGES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
POSTER_SIZE = 256  # poster frames are square (the decoder's centre crop), this many pixels a side
MAX_MEDIA_BYTES = 512 * 2**20  # a file larger than this is not read into a replica's memory


class MediaRefused(FastslowError):
    """The item's media is not served: outside the collection, missing, too large or not decodable."""


def local_path_inside(uri: str, root: str) -> str:
    """The real path of local file `uri` if it lies inside `root` once both are resolved (symlinks included)."""
    if not os.path.isabs(uri) or not os.path.isabs(root):
        raise MediaRefused("not an absolute path inside the collection")
    real, real_root = os.path.realpath(uri), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root or real == real_root:
        raise MediaRefused("outside the collection")
    return real


def s3_uri_inside(uri: str, root: str) -> str:
    """`uri` if it is an object under the s3:// prefix `root` (no `.` or `..` key segments)."""
    _, key = storage.split_s3(uri)
    if not uri.startswith(root.rstrip("/") + "/") or any(p in (".", "..") for p in key.split("/")):
        raise MediaRefused("outside the collection")
    return uri


def _read_local(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise MediaRefused("not a file")
            if info.st_size > MAX_MEDIA_BYTES:
                raise MediaRefused(f"file too large ({info.st_size} bytes)")
            return f.read()
    except OSError:
        raise MediaRefused("missing file") from None


def image_for_browser(data: bytes) -> tuple[bytes, str]:
    """(bytes, content type): a browser image format as is, any other image PIL reads as PNG."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format in BROWSER_IMAGES:
                return data, BROWSER_IMAGES[img.format]
            if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
                raise MediaRefused(f"image too large ({img.width}x{img.height})")
            out = io.BytesIO()
            ImageOps.exif_transpose(img).convert("RGB").save(out, format="PNG")
            return out.getvalue(), "image/png"
    except MediaRefused:
        raise
    except Exception:  # noqa: BLE001 - PIL raises many kinds on data that is not an image
        raise MediaRefused("not a readable image") from None


def poster_frame(data: bytes, size: int = POSTER_SIZE) -> bytes:
    """A video's middle frame (the project's decoder, centre-cropped to size x size) as JPEG."""
    from PIL import Image

    try:
        frame = decode_video(data, num_frames=1, size=size)[0]
    except DecodeError as e:
        raise MediaRefused(f"video does not decode ({e})") from None
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=85)
    return out.getvalue()


class MediaReader:
    """Reads items' media from inside their collection; video posters and re-encoded images kept in an LRU."""

    def __init__(self, capacity: int = 256, poster_size: int = POSTER_SIZE):
        self.capacity, self.poster_size = capacity, poster_size
        self.cache: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, item: dict, root: str | None) -> tuple[bytes, str]:
        """(bytes, content type) of `item`'s ({uri, media}) media; MediaRefused when it is not served."""
        uri = item.get("uri") or ""
        inside = split_member(uri)  # a member of a shard file (tar, Parquet): the shard must be in the collection
        container, member = inside if inside is not None else (uri, None)
        if not root:
            raise MediaRefused("the index version records no collection root (rebuild it to serve media)")
        if storage.is_s3(container) != storage.is_s3(root):
            raise MediaRefused("outside the collection")
        if storage.is_s3(container):
            where = s3_uri_inside(container, root)
            key: tuple = (where, member)
        else:
            where = local_path_inside(container, root)
            try:
                info = os.stat(where)
            except OSError:
                raise MediaRefused("missing file") from None
            if not stat.S_ISREG(info.st_mode):  # checked before open(): opening a FIFO would block
                raise MediaRefused("not a file")
            key = (where, member, info.st_mtime_ns, info.st_size)  # a rewritten file is not answered from the cache
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        media = item.get("media") or media_from_extension(member or uri)
        data = self._read(where) if member is None else self._read_member(where, member, item)
        if media == "video":
            answer = poster_frame(data, self.poster_size), "image/jpeg"
        elif media == "image":
            answer = image_for_browser(data)
            if answer[0] is data:  # served as stored: nothing worth caching
                return answer
        else:
            raise MediaRefused(f"unknown media type {media!r}")
        with self.lock:
            self.cache[key] = answer
            while len(self.cache) > self.capacity:
                self.cache.popitem(last=False)
        return answer

    @staticmethod
    def _read_member(container: str, member: str, item: dict) -> bytes:
        """A shard member's bytes: one ranged read of its recorded byte range (never the whole shard)."""
        size = item.get("size")
        if size is not None and size > MAX_MEDIA_BYTES:
            raise MediaRefused(f"file too large ({size} bytes)")
        try:
            return read_member(member_uri(container, member), item.get("offset"), size)
        except DecodeError as e:
            raise MediaRefused(str(e)) from None
        except FastslowError as e:
            raise MediaRefused("missing file" if isinstance(e, storage.MissingFileError) else "unreadable") from None

    @staticmethod
    def _read(where: str) -> bytes:
        if not storage.is_s3(where):
            return _read_local(where)
        try:
            data = storage.read_bytes(where)
        except FastslowError as e:
            raise MediaRefused("missing file" if isinstance(e, storage.MissingFileError) else "unreadable") from None
        if len(data) > MAX_MEDIA_BYTES:
            raise MediaRefused(f"file too large ({len(data)} bytes)")
        return data
