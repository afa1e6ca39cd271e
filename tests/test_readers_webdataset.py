"""webdataset tar shards: grouping by key, bad keys, truncated shards, S3 streaming."""

from __future__ import annotations

import json
import os

import pytest
from media_fixtures import make_jpeg_bytes, make_mp4_bytes, make_png_bytes, make_tar_bytes, random_bytes, write_file

from fastslow import storage
from fastslow.data import DecodeConfig, ReadReport, WebDatasetReader, load_split, open_dataset
from fastslow.errors import FastslowError

CFG = DecodeConfig(image_size=8, num_frames=2)


def shard0() -> bytes:
    return make_tar_bytes(
        [
            ("000.jpg", make_jpeg_bytes(color=(230, 10, 10))),
            ("000.txt", b"a red square\n"),
            ("000.json", json.dumps({"url": "http://x/0.jpg", "width": 32}).encode()),
            ("001.png", make_png_bytes(color=(10, 10, 230))),
            ("001.txt", "a blue square".encode()),
            ("002.jpg", random_bytes()),  # corrupt image
            ("002.txt", b"broken"),
            ("003.jpg", make_jpeg_bytes()),  # no caption
            ("004.txt", b"caption without media"),
            ("005.jpg", make_jpeg_bytes()),
            ("005.txt", b"   "),  # blank caption
            ("006.cls", b"7"),  # unknown member only: no media
        ]
    )


def shard1() -> bytes:
    return make_tar_bytes(
        [
            ("100.jpg", make_jpeg_bytes()),
            ("100.txt", b"first of shard 1"),
            ("101.jpg", make_jpeg_bytes(64, 64)),
            ("101.txt", b"second of shard 1"),
            ("102.jpg", make_jpeg_bytes()),
            ("102.txt", b"third of shard 1"),
        ]
    )


def _problems(report):
    return {p.id: p.reason for p in report.problems}


def test_groups_members_by_key_and_reports_bad_keys(tmp_path):
    path = write_file(tmp_path / "00000.tar", shard0())
    report = ReadReport()
    samples = list(WebDatasetReader([path]).samples(None, report))
    assert [s.id for s in samples] == ["000", "001", "002"]
    assert samples[0].captions == ["a red square"]
    assert samples[0].uri == f"{path}#000.jpg"
    assert samples[0].meta == {"url": "http://x/0.jpg", "width": 32}
    assert samples[1].data == make_png_bytes(color=(10, 10, 230))
    assert _problems(report) == {
        "003": "no caption",
        "004": "no media member",
        "005": "no caption",
        "006": "no media member",
    }
    assert report.read == 7


def test_truncated_shard_is_reported_and_next_shard_read(tmp_path):
    good = write_file(tmp_path / "a" / "00000.tar", shard0())
    data = shard1()
    # Cut inside 101.jpg's data: 100 survives, 101 and the rest of the shard are lost.
    cut = write_file(tmp_path / "a" / "00001.tar", data[: data.index(b"second of shard 1") - 900])
    after = write_file(tmp_path / "a" / "00002.tar", make_tar_bytes([("200.jpg", make_jpeg_bytes()), ("200.txt", b"x")]))
    reader = open_dataset(str(tmp_path / "a"))
    assert isinstance(reader, WebDatasetReader) and reader.shard_uris == [good, cut, after]
    loaded = load_split(reader, None, CFG, progress=False)
    assert loaded.ids == ["000", "001", "100", "200"]
    problems = _problems(loaded.report)
    assert problems["002"] == "not an image"
    assert problems["101"].startswith("truncated tar") and "rest of the shard lost" in problems["101"]
    assert [p.uri for p in loaded.report.problems if p.id == "101"] == [cut]
    assert loaded.report.read == loaded.report.used + len(loaded.report.problems)


@pytest.mark.parametrize("cut", [1024, 1124, 1536], ids=["at-header", "in-header", "in-data"])
def test_truncation_anywhere_is_noticed(tmp_path, cut):
    # 512-byte blocks: 100.txt is blocks 0-1, 100.jpg's header is block 2. Cut at or inside a header,
    # tarfile stops quietly as if the archive had ended; the reader must still call it truncated.
    data = make_tar_bytes([("100.txt", b"cap"), ("100.jpg", make_jpeg_bytes()), ("101.txt", b"x")])
    path = write_file(tmp_path / "s.tar", data[:cut])
    report = ReadReport()
    assert list(WebDatasetReader([path]).samples(None, report)) == []
    assert report.read == 1 and report.problems[0].id == "100"
    assert report.problems[0].reason.startswith("truncated tar")


def test_mixed_media_needs_a_choice(tmp_path):
    path = write_file(
        tmp_path / "mixed.tar",
        make_tar_bytes(
            [("a.jpg", make_jpeg_bytes()), ("a.txt", b"img"), ("b.mp4", make_mp4_bytes(4)), ("b.txt", b"vid")]
        ),
    )
    reader = open_dataset(path)
    with pytest.raises(FastslowError, match="mixes images and videos"):
        load_split(reader, None, CFG, progress=False)
    videos = load_split(reader, None, CFG, media="video", progress=False)
    assert videos.ids == ["b"] and videos.pixels.shape == (1, 2, 8, 8, 3)
    assert _problems(videos.report) == {"a": "not a video"}


def test_split_request_and_bad_shard_are_errors(tmp_path):
    path = write_file(tmp_path / "x.tar", shard1())
    with pytest.raises(FastslowError, match="no split information"):
        list(WebDatasetReader([path]).samples("train", ReadReport()))
    # A shard that is not a tar is reported (as one item lost), and the next shard is still read.
    bad = write_file(tmp_path / "bad.tar", random_bytes(3000))
    report = ReadReport()
    samples = list(WebDatasetReader([bad, path]).samples(None, report))
    assert [s.id for s in samples] == ["100", "101", "102"]
    assert [p.reason for p in report.problems][0].startswith("not a tar file") and report.read == 4
    with pytest.raises(FastslowError, match="nope.tar: no such file"):
        open_dataset(str(tmp_path / "nope.tar"))


def test_reads_shards_from_s3(tmp_path, s3_bucket):
    storage.write_bytes(f"{s3_bucket}/shards/00000.tar", shard0())
    storage.write_bytes(f"{s3_bucket}/shards/00001.tar", shard1())
    storage.write_bytes(f"{s3_bucket}/shards/00000_stats.json", b"{}")
    reader = open_dataset(f"{s3_bucket}/shards")
    loaded = load_split(reader, None, CFG, progress=False, workers=2)
    assert loaded.ids == ["000", "001", "100", "101", "102"]
    assert loaded.uris[2] == f"{s3_bucket}/shards/00001.tar#100.jpg"
    assert loaded.report.balanced and _problems(loaded.report)["002"] == "not an image"
    assert os.path.basename(reader.shard_uris[0]) == "00000.tar"
