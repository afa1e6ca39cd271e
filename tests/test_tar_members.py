"""Items inside tar shards read back one at a time: the byte range the reader records is what a ranged read
fetches (an S3 ranged GET, counted here by the bytes S3 sends), the /media route's reader serves a member of
a 50 MB shard by reading little more than the member, and brace patterns name shards."""

from __future__ import annotations

import json

import pytest
from media_fixtures import make_jpeg_bytes, make_tar_bytes, random_bytes, write_file

from fastslow import storage
from fastslow.data import ReadReport, WebDatasetReader, open_dataset
from fastslow.data.members import expand_braces, read_member, split_member
from fastslow.errors import FastslowError
from serve_app.media import MediaReader


def big_shard() -> tuple[bytes, bytes]:
    """A ~50 MB shard: big filler members around one small JPEG (key `target`); (shard bytes, the JPEG)."""
    jpeg = make_jpeg_bytes(48, 32, (200, 30, 90))
    filler = random_bytes(8 * 1024 * 1024, seed=1)
    members = [(f"fill{i}.bin", filler) for i in range(3)]
    members += [("target.jpg", jpeg), ("target.txt", b"the one we want"),
                ("target.json", json.dumps({"url": "https://example.com/t.jpg"}).encode())]
    members += [(f"fill{i}.bin", filler) for i in range(3, 6)]
    return make_tar_bytes(members), jpeg


class S3BytesCounter:
    """Counts the body bytes S3 answers GetObject with (botocore's after-call event on the shared client)."""

    def __init__(self):
        self.bytes = 0
        storage.s3_client().meta.events.register("after-call.s3.GetObject", self._count)

    def _count(self, parsed, **_):
        self.bytes += int(parsed.get("ContentLength") or 0)

    def close(self):
        storage.s3_client().meta.events.unregister("after-call.s3.GetObject", self._count)


def test_locations_split_and_brace_patterns_expand():
    assert split_member("s3://b/x#y/00001.tar#0001.jpg") == ("s3://b/x#y/00001.tar", "0001.jpg")
    assert split_member("/data/a.parquet#0007") == ("/data/a.parquet", "0007")
    assert split_member("/data/photo#1.jpg") is None
    assert expand_braces("s3://b/laion/{00008..00011}.tar") == [f"s3://b/laion/{n:05d}.tar" for n in range(8, 12)]
    assert expand_braces("d/{0..1}/{8..9}.tar") == ["d/0/8.tar", "d/0/9.tar", "d/1/8.tar", "d/1/9.tar"]
    with pytest.raises(FastslowError, match="runs backwards"):
        expand_braces("{3..1}.tar")


def test_recorded_range_reads_the_member_exactly(tmp_path):
    shard, jpeg = big_shard()
    path = write_file(tmp_path / "00000.tar", shard)
    [sample] = list(WebDatasetReader([path]).samples(None, ReadReport()))
    assert (sample.id, sample.uri, sample.size) == ("target", f"{path}#target.jpg", len(jpeg))
    assert shard[sample.offset : sample.offset + sample.size] == jpeg
    assert read_member(sample.uri, sample.offset, sample.size) == jpeg
    assert read_member(sample.uri) == jpeg  # no recorded range: the tar is streamed up to the member


def test_media_of_a_member_of_a_50mb_shard_on_s3_reads_far_less_than_the_shard(s3_bucket):
    shard, jpeg = big_shard()
    uri = f"{s3_bucket}/laion/00003.tar"
    storage.write_bytes(uri, shard)
    reader = open_dataset(f"{s3_bucket}/laion/{{00002..00003}}.tar")  # 00002 is not there: reported, not fatal
    report = ReadReport()
    [sample] = list(reader.samples(None, report))
    assert [(p.id, p.reason) for p in report.problems] == [("00002.tar", "missing shard (no such file)")] + [
        (f"fill{i}", "no media member") for i in range(6)]
    item = {"id": sample.id, "uri": sample.uri, "media": "image", "offset": sample.offset, "size": sample.size}
    counter = S3BytesCounter()
    try:
        body, content_type = MediaReader().get(item, f"{s3_bucket}/laion")
    finally:
        counter.close()
    assert body == jpeg and content_type == "image/jpeg"
    assert len(shard) > 50_000_000 and counter.bytes == len(jpeg)  # one ranged GET of the member alone
    with pytest.raises(Exception, match="outside the collection"):
        MediaReader().get(item, f"{s3_bucket}/elsewhere")
