"""The one storage layer of the project: local paths and `s3://bucket/key` URIs behind the same calls.

S3 goes through boto3's standard credential chain. The endpoint can be overridden with
`FASTSLOW_S3_ENDPOINT` or boto3's own `AWS_ENDPOINT_URL` (for MinIO, moto, ...).

Requests that fail for the store's sake (connection refused or cut, timeouts, 5xx, throttling) are
retried with boto3's standard exponential backoff, `FASTSLOW_S3_MAX_ATTEMPTS` tries in all (default
10: rides out about a minute of outage), then raise StorageUnavailableError, never an item error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO

from fastslow.errors import FastslowError
from fastslow.storage_s3 import (
    DEFAULT_MAX_ATTEMPTS,  # noqa: F401  (part of this module's API)
    MAX_ATTEMPTS_ENV,  # noqa: F401
    S3_PREFIX,
    MissingFileError,
    _s3_endpoint,
    _s3_errors,
    is_s3,
    s3_client,
    split_s3,
)
from fastslow.storage_ranged import DEFAULT_READ_AHEAD, RangedReader, object_size  # noqa: F401  (API)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URI (S3 parts are joined with single slashes)."""
    if not is_s3(base):
        return os.path.join(base, *parts)
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def parent(uri: str) -> str:
    """The folder holding `uri` (a local directory or an S3 prefix URI)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        head = key.rstrip("/").rpartition("/")[0]
        return f"{S3_PREFIX}{bucket}/{head}" if head else f"{S3_PREFIX}{bucket}"
    return os.path.dirname(os.path.abspath(uri))


def basename(uri: str) -> str:
    return uri.rstrip("/").rpartition("/")[2] if is_s3(uri) else os.path.basename(uri.rstrip(os.sep))


def _missing_local(path: str) -> MissingFileError:
    return MissingFileError(f"{path}: no such file")


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    try:
        with open(uri, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _missing_local(uri) from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file; locally through a temp file and rename, so readers never see half a file."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    folder = os.path.dirname(os.path.abspath(uri))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(uri)[:64])
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, uri)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_text(uri: str, encoding: str = "utf-8") -> str:
    data = read_bytes(uri)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise FastslowError(f"{uri}: not {encoding} text") from None


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def exists(uri: str) -> bool:
    """True for an existing file (or local directory)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            with _s3_errors(uri):
                s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except MissingFileError:
            return False
    return os.path.exists(uri)


def is_dir(uri: str) -> bool:
    """True for a local directory, or an S3 prefix that has at least one object under `prefix/`."""
    if not is_s3(uri):
        return os.path.isdir(uri)
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    with _s3_errors(uri):
        resp = s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    return resp.get("KeyCount", 0) > 0


def _suffix_ok(name: str, suffixes: tuple[str, ...] | None) -> bool:
    return suffixes is None or name.lower().endswith(suffixes)


def list_files(prefix_uri: str, suffixes=None, recursive: bool = True) -> list[str]:
    """Files under a folder (a local directory or an S3 prefix taken as a folder), sorted full URIs.

    `suffixes` keeps names ending with one of them (case-insensitive). A missing folder gives [].
    """
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    sfx = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    if is_s3(prefix_uri):
        return _list_s3(prefix_uri, sfx, recursive)
    root = prefix_uri
    out: list[str] = []
    if not os.path.isdir(root):
        return out
    if not recursive:
        with os.scandir(root) as entries:
            out = [os.path.join(root, e.name) for e in entries if e.is_file() and _suffix_ok(e.name, sfx)]
        return sorted(out)
    for folder, _dirs, files in os.walk(root):
        # `.tmp-` files are write_bytes' half-written files.
        out.extend(os.path.join(folder, f) for f in files if _suffix_ok(f, sfx) and not f.startswith(".tmp-"))
    return sorted(out)


def delete_tree(prefix_uri: str) -> int:
    """Delete every file under a folder (a local directory, or an S3 prefix taken as a folder); how many."""
    if not is_s3(prefix_uri):
        import shutil

        count = len(list_files(prefix_uri))
        shutil.rmtree(prefix_uri, ignore_errors=True)
        return count
    bucket, _ = split_s3(prefix_uri)
    keys = [split_s3(u)[1] for u in _list_s3(prefix_uri, None, True)]
    with _s3_errors(prefix_uri):
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            s3_client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                              "Quiet": True})
    return len(keys)


def _list_s3(prefix_uri: str, sfx: tuple[str, ...] | None, recursive: bool) -> list[str]:
    bucket, key = split_s3(prefix_uri)
    # A folder: `data` must not match `data2/...`.
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    kwargs = {"Bucket": bucket, "Prefix": prefix}
    if not recursive:
        kwargs["Delimiter"] = "/"
    out = []
    with _s3_errors(prefix_uri):
        for page in s3_client().get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                if not k.endswith("/") and _suffix_ok(k, sfx):
                    out.append(f"{S3_PREFIX}{bucket}/{k}")
    return sorted(out)


def read_range(uri: str, offset: int, size: int) -> bytes:
    """`size` bytes of `uri` from byte `offset` (an S3 ranged GET; a seek locally): one member of a big file
    without reading the rest. Fewer bytes come back only where the file ends first."""
    if size <= 0:
        return b""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            body = s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + size - 1}")["Body"]
            return body.read()
    try:
        with open(uri, "rb") as f:
            f.seek(offset)
            return f.read(size)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _missing_local(uri) from None


def open_read(uri: str) -> IO[bytes]:
    """A binary file-like to read from (for S3 the streaming body, so big objects are never held whole)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return open(uri, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _missing_local(uri) from None


def open_seekable(uri: str, read_ahead: int = DEFAULT_READ_AHEAD) -> RangedReader:
    """A seekable, read-only file over `uri` that reads by ranges (`read_ahead` bytes at least per request), for
    readers that need only parts of a big file (a video's index and a few keyframes); MissingFileError if absent."""
    return RangedReader(uri, read_ahead)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local filename for `uri`, for libraries that need one: the path itself, or a temp download."""
    if not is_s3(uri):
        if not os.path.isfile(uri):
            raise _missing_local(uri)
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="fastslow-") as tmp:
        path = os.path.join(tmp, basename(uri) or "object")  # keep the name: some libraries read the extension
        download_file(uri, path)
        yield path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a local file, read in chunks (never whole into memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def upload_file(local_path: str, uri: str) -> None:
    """Copy a local file to `uri` (S3: boto3's managed, multipart, streamed transfer)."""
    if not os.path.isfile(local_path):
        raise _missing_local(local_path)
    if not is_s3(uri):
        os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
        shutil.copyfile(local_path, uri)
        return
    bucket, key = split_s3(uri)
    with _s3_errors(uri):
        s3_client().upload_file(local_path, bucket, key)


def download_file(uri: str, local_path: str) -> None:
    """Copy `uri` to a local file, making parent folders (S3: boto3's managed, streamed transfer)."""
    os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
    if not is_s3(uri):
        if not os.path.isfile(uri):
            raise _missing_local(uri)
        shutil.copyfile(uri, local_path)
        return
    bucket, key = split_s3(uri)
    with _s3_errors(uri):
        s3_client().download_file(bucket, key, local_path)


def arrow_filesystem(uri: str):
    """(pyarrow filesystem or None, path) for libraries that take one (Ray Train's storage, Ray Data).

    Local: (None, absolute path). S3: an S3FileSystem on the same endpoint and credential chain as boto3
    here, and `bucket/key` (pyarrow wants no scheme when given a filesystem).
    """
    if not is_s3(uri):
        return None, os.path.abspath(uri)
    from urllib.parse import urlparse

    from pyarrow import fs

    bucket, key = split_s3(uri)
    kwargs = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    endpoint = _s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return fs.S3FileSystem(**kwargs), f"{bucket}/{key}".rstrip("/")
