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
import threading
from collections.abc import Iterator
from typing import IO

from fastslow.errors import FastslowError, StorageUnavailableError

S3_PREFIX = "s3://"
MAX_ATTEMPTS_ENV = "FASTSLOW_S3_MAX_ATTEMPTS"
DEFAULT_MAX_ATTEMPTS = 10
# Error codes that say the store, not the request, failed: worth a retry, and never an item's fault.
_UNAVAILABLE_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
                      "RequestTimeout", "Throttling", "ThrottlingException", "RequestTimeTooSkewed"}

_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


class MissingFileError(FastslowError):
    """The file named by a URI does not exist."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_PREFIX)


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


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`)."""
    if not is_s3(uri):
        raise FastslowError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[len(S3_PREFIX):].partition("/")
    if not bucket:
        raise FastslowError(f"{uri}: S3 URI has no bucket name")
    return bucket, key


def _s3_endpoint() -> str | None:
    return os.environ.get("FASTSLOW_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client():
    """One boto3 S3 client per process and endpoint, made lazily (boto3 clients are thread-safe)."""
    endpoint = _s3_endpoint()
    # Keyed on the pid too: a client must not be shared across a fork.
    attempts = _max_attempts()
    key = (os.getpid(), endpoint, os.environ.get("AWS_DEFAULT_REGION"), attempts)
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session()  # sessions are not thread-safe: one per client
            client = session.client(
                "s3", endpoint_url=endpoint,
                config=Config(max_pool_connections=32, connect_timeout=10, read_timeout=60,
                              retries={"mode": "standard", "max_attempts": attempts}))
            _clients[key] = client
    return client


def _max_attempts() -> int:
    text = os.environ.get(MAX_ATTEMPTS_ENV, "") or str(DEFAULT_MAX_ATTEMPTS)
    if not text.isdigit() or int(text) < 1:
        raise FastslowError(f"{MAX_ATTEMPTS_ENV}={text!r}: expected a whole number of tries, at least 1")
    return int(text)


@contextlib.contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn boto errors into one-line FastslowErrors naming the URI (never the credentials)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError, Boto3Error) as e:
        raise _s3_error(uri, e) from None


def _s3_error(uri: str, e: BaseException) -> FastslowError:
    """The FastslowError for a boto error (managed transfers wrap the ClientError: look behind them)."""
    from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return MissingFileError(f"{uri}: no such file")
        if code == "NoSuchBucket":
            return MissingFileError(f"{uri}: no such bucket")
        if code in ("403", "AccessDenied"):
            return FastslowError(f"{uri}: access denied")
        if code in _UNAVAILABLE_CODES:
            return StorageUnavailableError(f"{uri}: S3 unavailable (error {code} after {_max_attempts()} tries)")
        return FastslowError(f"{uri}: S3 error {code}")
    if isinstance(e, NoCredentialsError):
        return FastslowError(f"{uri}: no AWS credentials found (standard boto3 credential chain)")
    if isinstance(e, (BotoConnectionError, HTTPClientError)):
        return StorageUnavailableError(f"{uri}: S3 endpoint {_s3_endpoint() or 'AWS'} unreachable "
                                       f"({type(e).__name__} after {_max_attempts()} tries)")
    behind = e.__cause__ or e.__context__
    if behind is not None:
        return _s3_error(uri, behind)
    return FastslowError(f"{uri}: S3 request failed ({type(e).__name__})")


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
