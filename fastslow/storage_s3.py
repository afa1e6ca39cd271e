"""The S3 side of the storage layer (fastslow.storage): `s3://bucket/key` URIs, the boto3 client per process
and endpoint, and the translation of boto errors into FastslowErrors.

Requests that fail for the store's sake (connection refused or cut, timeouts, 5xx, throttling) are
retried with boto3's standard exponential backoff, `FASTSLOW_S3_MAX_ATTEMPTS` tries in all (default
10: rides out about a minute of outage), then raise StorageUnavailableError, never an item error.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from fastslow.errors import FastslowError, StorageUnavailableError

S3_PREFIX = "s3://"
MAX_ATTEMPTS_ENV = "FASTSLOW_S3_MAX_ATTEMPTS"
DEFAULT_MAX_ATTEMPTS = 10
IMDS_TIMEOUT_S, IMDS_TRIES = 3, 3
# Error codes that say the store, not the request, failed: worth a retry, and never an item's fault.
_UNAVAILABLE_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
                      "RequestTimeout", "Throttling", "ThrottlingException", "RequestTimeTooSkewed"}

_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


class MissingFileError(FastslowError):
    """The file named by a URI does not exist."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_PREFIX)


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

            # Sessions are not thread-safe: one per client.
            session = boto3.session.Session(botocore_session=_botocore_session())
            client = session.client(
                "s3", endpoint_url=endpoint,
                config=Config(max_pool_connections=32, connect_timeout=10, read_timeout=60,
                              retries={"mode": "standard", "max_attempts": attempts}))
            _clients[key] = client
    return client


def _botocore_session():
    """A botocore session whose instance-metadata credential lookup gets IMDS_TRIES tries of IMDS_TIMEOUT_S.

    botocore's default is one try of 1 s: on a node whose CPUs are all held by embedding actors the answer can
    come later than that, and the job then fails with "no AWS credentials found" although the node has a role.
    AWS_METADATA_SERVICE_TIMEOUT / _NUM_ATTEMPTS (or the config file) still decide where they are set."""
    import botocore.session

    from botocore.exceptions import BotoCoreError

    core = botocore.session.get_session()
    try:
        profile = core.get_scoped_config()
    except BotoCoreError:  # e.g. an AWS_PROFILE the config lacks: the client's creation says so
        return core
    for name, env, value in (("metadata_service_timeout", "AWS_METADATA_SERVICE_TIMEOUT", IMDS_TIMEOUT_S),
                             ("metadata_service_num_attempts", "AWS_METADATA_SERVICE_NUM_ATTEMPTS", IMDS_TRIES)):
        if not os.environ.get(env) and name not in profile:
            core.set_config_variable(name, value)
    return core


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
    from botocore.exceptions import ProxyConnectionError

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
    if isinstance(e, ProxyConnectionError):
        # Also raised by the credential lookup itself (instance metadata through a proxy), before any S3 call.
        proxy = e.kwargs.get("proxy_url") or "the HTTP(S)_PROXY of the environment"
        return StorageUnavailableError(f"{uri}: could not connect through the proxy {proxy} (for the S3 endpoint "
                                       f"{_s3_endpoint() or 'AWS'} or the credential lookup): check HTTP_PROXY, "
                                       "HTTPS_PROXY and NO_PROXY")
    if isinstance(e, (BotoConnectionError, HTTPClientError)):
        return StorageUnavailableError(f"{uri}: S3 endpoint {_s3_endpoint() or 'AWS'} unreachable "
                                       f"({type(e).__name__} after {_max_attempts()} tries)")
    behind = e.__cause__ or e.__context__
    if behind is not None:
        return _s3_error(uri, behind)
    return FastslowError(f"{uri}: S3 request failed ({type(e).__name__})")
