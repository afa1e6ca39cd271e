"""The storage layer on local paths and on a moto S3 server."""

from __future__ import annotations

import os

import pytest

from fastslow import storage
from fastslow.errors import FastslowError


def _roundtrip(base: str, tmp_path) -> None:
    """The same checks on a local folder or an S3 bucket."""
    a = storage.join(base, "sub", "a.bin")
    storage.write_bytes(a, b"\x00\x01abc")
    assert storage.read_bytes(a) == b"\x00\x01abc"
    assert storage.exists(a)
    assert not storage.exists(storage.join(base, "sub", "nope.bin"))

    storage.write_text(storage.join(base, "sub", "deeper", "t.txt"), "héllo")
    assert storage.read_text(storage.join(base, "sub", "deeper", "t.txt")) == "héllo"
    storage.write_bytes(storage.join(base, "sub2", "c.BIN"), b"c")

    assert storage.list_files(storage.join(base, "sub")) == [
        storage.join(base, "sub", "a.bin"),
        storage.join(base, "sub", "deeper", "t.txt"),
    ]
    assert storage.list_files(storage.join(base, "sub"), recursive=False) == [storage.join(base, "sub", "a.bin")]
    # `sub` is a folder: its listing must not include `sub2/...`; suffixes ignore case.
    assert storage.list_files(base, suffixes=[".bin"]) == [a, storage.join(base, "sub2", "c.BIN")]
    assert storage.list_files(storage.join(base, "missing")) == []
    assert storage.is_dir(storage.join(base, "sub")) and not storage.is_dir(storage.join(base, "missing"))

    with storage.open_read(a) as f:
        assert f.read(2) == b"\x00\x01"
        assert f.read() == b"abc"

    with storage.local_copy(a) as path:
        assert os.path.isfile(path) and path.endswith("a.bin")
        assert open(path, "rb").read() == b"\x00\x01abc"

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(300_000))
    dst = storage.join(base, "up", "big.bin")
    storage.upload_file(str(big), dst)
    storage.download_file(dst, str(tmp_path / "down" / "big.bin"))
    assert (tmp_path / "down" / "big.bin").read_bytes() == big.read_bytes()

    missing = storage.join(base, "sub", "nope.bin")
    for call in (storage.read_bytes, storage.open_read):
        with pytest.raises(storage.MissingFileError, match="nope.bin: no such file"):
            call(missing)
    with pytest.raises(storage.MissingFileError, match="no such file"):
        storage.download_file(missing, str(tmp_path / "x"))
    with pytest.raises(FastslowError, match="no such file"):
        with storage.local_copy(missing):
            pass


def test_local_roundtrip(tmp_path):
    _roundtrip(str(tmp_path / "root"), tmp_path)


def test_s3_roundtrip(s3_bucket, tmp_path):
    _roundtrip(s3_bucket, tmp_path)


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "x" / "f.txt"
    storage.write_text(str(target), "one")
    storage.write_text(str(target), "two")
    assert target.read_text() == "two"
    assert os.listdir(tmp_path / "x") == ["f.txt"]


def test_join_and_parent():
    assert storage.join("s3://b/", "x/", "/y.jpg") == "s3://b/x/y.jpg"
    assert storage.join("s3://b/p", "", "y") == "s3://b/p/y"
    assert storage.join("/a", "b", "c") == "/a/b/c"
    assert storage.parent("s3://b/x/y.jpg") == "s3://b/x"
    assert storage.parent("s3://b/y.jpg") == "s3://b"
    assert storage.basename("s3://b/x/y.jpg") == "y.jpg"
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/s3/b")
    with pytest.raises(FastslowError, match="no bucket"):
        storage.split_s3("s3:///key")


def test_s3_missing_bucket_is_a_clear_error(moto_endpoint):
    with pytest.raises(FastslowError, match="s3://no-such-bucket-xyz/k: no such"):
        storage.read_bytes("s3://no-such-bucket-xyz/k")


def test_client_cache_is_keyed_on_endpoint(moto_endpoint, monkeypatch):
    first = storage.s3_client()
    assert storage.s3_client() is first
    monkeypatch.setenv("FASTSLOW_S3_ENDPOINT", "http://127.0.0.1:1")
    other = storage.s3_client()
    assert other is not first
    assert other.meta.endpoint_url == "http://127.0.0.1:1"
    monkeypatch.delenv("FASTSLOW_S3_ENDPOINT")
    assert storage.s3_client() is first
    assert first.meta.endpoint_url == moto_endpoint


def test_unreachable_s3_is_storage_unavailable_never_an_item_error(monkeypatch, tmp_path):
    """A store that refuses connections: retried, then StorageUnavailableError naming the URI and endpoint; reading
    a sample's bytes passes it on (the run stops) instead of calling the item unreadable."""
    from cluster.connect import free_port
    from fastslow.data.decode import read_sample_bytes
    from fastslow.data.types import Sample
    from fastslow.errors import StorageUnavailableError

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("FASTSLOW_S3_ENDPOINT", endpoint)
    monkeypatch.setenv(storage.MAX_ATTEMPTS_ENV, "2")
    for call in (lambda: storage.read_bytes("s3://b/k.jpg"), lambda: storage.write_text("s3://b/k.txt", "x"),
                 lambda: storage.upload_file(__file__, "s3://b/up.py"), lambda: storage.list_files("s3://b/p/")):
        with pytest.raises(StorageUnavailableError, match=f"s3://b/.*: S3 endpoint {endpoint} unreachable .* 2 tries"):
            call()
    with pytest.raises(StorageUnavailableError):
        read_sample_bytes(Sample(id="k", media="image", uri="s3://b/k.jpg", captions=[]))
    monkeypatch.setenv(storage.MAX_ATTEMPTS_ENV, "none")
    with pytest.raises(FastslowError, match="FASTSLOW_S3_MAX_ATTEMPTS='none': expected a whole number"):
        storage.read_bytes("s3://b/k.jpg")


def test_a_dead_proxy_is_named_not_called_an_unreachable_endpoint(monkeypatch):
    """A proxy that refuses connections (botocore honours HTTP_PROXY, for the credential lookup too): the error says
    so and names the proxy, instead of blaming the S3 endpoint."""
    from cluster.connect import free_port
    from fastslow.errors import StorageUnavailableError

    proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("FASTSLOW_S3_ENDPOINT", "http://s3.example.internal:9000")  # not in no_proxy
    for key in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(key, proxy)
    monkeypatch.setenv(storage.MAX_ATTEMPTS_ENV, "1")
    with pytest.raises(StorageUnavailableError, match=f"s3://b/k.jpg: could not connect through the proxy {proxy}"):
        storage.read_bytes("s3://b/k.jpg")


def test_a_node_slow_to_answer_instance_metadata_still_gets_its_roles_credentials(monkeypatch, tmp_path):
    """An IMDS that answers after 1.5 s (a node whose CPUs the embedding actors hold): botocore's own default (one
    try of 1 s) finds no credentials; the storage layer's session finds the role's. An explicit
    AWS_METADATA_SERVICE_TIMEOUT still decides."""
    import botocore.session
    from fake_imds import FakeIMDS

    from fastslow import storage_s3

    imds = FakeIMDS(delay_s=1.5)
    try:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            monkeypatch.delenv(key)
        for name in ("config", "credentials"):
            (tmp_path / name).touch()
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{imds.server.server_address[1]}/")
        assert botocore.session.get_session().get_credentials() is None
        found = storage_s3._botocore_session().get_credentials()
        assert (found.method, found.access_key) == ("iam-role", imds.access_key)
        monkeypatch.setenv("AWS_METADATA_SERVICE_TIMEOUT", "1")
        monkeypatch.setenv("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "2")
        session = storage_s3._botocore_session()
        assert [session.get_config_variable(n) for n in ("metadata_service_timeout",
                                                         "metadata_service_num_attempts")] == [1, 2]
    finally:
        imds.close()


def test_user_error_is_found_behind_causes_and_ray_wrapping():
    from fastslow.errors import StorageUnavailableError, user_error

    inner = StorageUnavailableError("s3://b/k: S3 endpoint x unreachable")

    class RemoteWrapper(StorageUnavailableError):  # as Ray's RayTaskError(cause class): the cause inside
        def __init__(self, cause):
            super().__init__("Traceback (most recent call last): ...")
            self.cause = cause

    try:
        try:
            raise RemoteWrapper(inner)
        except Exception as e:
            raise RuntimeError("executor failed") from e
    except RuntimeError as outer:
        assert user_error(outer) is inner
    assert user_error(ValueError("x")) is None


def _ranged_checks(base: str) -> None:
    """storage.open_seekable on a local file or an S3 object: reads, seeks and tells as a local file does, and
    counts the bytes it fetched (one read-ahead block per miss, never past the end)."""
    import io
    import random

    data = os.urandom(300_000)
    uri = storage.join(base, "r", "big.bin")
    storage.write_bytes(uri, data)
    with storage.open_seekable(uri, read_ahead=64 << 10) as f:
        assert f.readable() and f.seekable() and f.size == len(data) and f.bytes_fetched == 0
        assert f.read(10) == data[:10] and (f.fetches, f.bytes_fetched) == (1, 64 << 10)
        assert f.read(100) == data[10:110] and f.fetches == 1  # inside the buffer: nothing fetched
        assert f.seek(-5, io.SEEK_END) == len(data) - 5 and f.read(100) == data[-5:] and f.fetches == 2
        assert f.bytes_fetched == (64 << 10) + 5  # a block is cut at the end of the file
        assert f.read(1) == b"" and f.seek(len(data) + 10) == len(data) + 10 and f.read() == b""
        assert f.seek(20) == 20 and f.read(5) == data[20:25] and f.fetches == 2  # the first block is still kept
        for k in range(1, 5):  # four more blocks: the first is dropped (KEPT_BLOCKS = 4)
            f.seek(k * (64 << 10))
            f.read(1)
        f.seek(0)
        assert f.read(1) == data[:1] and f.fetches == 7
        with pytest.raises(ValueError):
            f.seek(-1)
        local, rng = io.BytesIO(data), random.Random(0)
        f.seek(0)
        for _ in range(200):  # the same random walk on both: every read, seek and tell agrees
            whence = rng.choice((io.SEEK_SET, io.SEEK_CUR, io.SEEK_END))
            origin = {io.SEEK_SET: 0, io.SEEK_CUR: local.tell(), io.SEEK_END: len(data)}[whence]
            offset = rng.randrange(0, len(data) + 1000) - origin  # a position from 0 to a little past the end
            assert f.seek(offset, whence) == local.seek(offset, whence)
            size = rng.choice((0, 1, 4096, 100_000, -1))
            assert f.read(size) == local.read(size) and f.tell() == local.tell()
        buf = bytearray(7)
        f.seek(3)
        assert f.readinto(buf) == 7 and bytes(buf) == data[3:10]
        fetched = f.bytes_fetched
    assert f.closed and fetched < 40 * len(data)
    with pytest.raises(ValueError):
        f.read(1)
    with pytest.raises(storage.MissingFileError, match="nope.bin: no such file"):
        storage.open_seekable(storage.join(base, "r", "nope.bin"))


def test_local_seekable_reader(tmp_path):
    _ranged_checks(str(tmp_path / "root"))


def test_s3_seekable_reader(s3_bucket):
    _ranged_checks(s3_bucket)
