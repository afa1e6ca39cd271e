"""VATEX reader: per-split JSON lists plus a video folder."""

from __future__ import annotations

import json
import os

import pytest
from media_fixtures import make_mp4_bytes, write_file

from fastslow import storage
from fastslow.data import DecodeConfig, ReadReport, VatexReader, load_split, open_dataset
from fastslow.errors import FastslowError

CFG = DecodeConfig(image_size=8, num_frames=4)


def make_vatex_dir(root) -> str:
    """vatex_training/validation JSONs + videos/: good mp4 and webm-named videos, a truncated one, bad entries."""
    good = make_mp4_bytes(8)
    train = [
        {"videoID": "v1", "enCap": ["a man runs", "running"]},
        {"videoID": "v2", "enCap": ["a dog jumps"]},
        {"videoID": "trunc", "enCap": ["cut short"]},
        {"videoID": "gone", "enCap": ["no file"]},
        {"videoID": "nocap", "enCap": []},
        {"videoID": "v1", "enCap": ["again"]},
        {"enCap": ["no id"]},
    ]
    val = [{"videoID": "v3", "enCap": ["a cat sleeps"], "chCap": ["..."]}]
    write_file(os.path.join(root, "vatex_training_v1.0.json"), json.dumps(train).encode())
    write_file(os.path.join(root, "vatex_validation_v1.0.json"), json.dumps(val).encode())
    write_file(os.path.join(root, "videos", "v1.mp4"), good)
    write_file(os.path.join(root, "videos", "v2.webm"), good)  # FFmpeg probes the content, not the name
    write_file(os.path.join(root, "videos", "v3.mkv"), good)
    write_file(os.path.join(root, "videos", "v3.mp4"), good)  # .mp4 is preferred over .mkv
    write_file(os.path.join(root, "videos", "trunc.mp4"), good[: len(good) // 2])
    write_file(os.path.join(root, "videos", "nocap.mp4"), good)
    write_file(os.path.join(root, "videos", "sub", "gone.mp4"), good)  # not at the root: not v "gone"
    return str(root)


def test_reads_splits_and_reports_bad_entries(tmp_path):
    root = make_vatex_dir(tmp_path)
    reader = open_dataset(root)
    assert isinstance(reader, VatexReader)
    assert reader.video_root == os.path.join(root, "videos")
    assert sorted(reader.splits()) == ["train", "val"]
    report = ReadReport()
    samples = list(reader.samples("train", report))
    assert [s.id for s in samples] == ["v1", "v2", "trunc"]
    assert samples[1].uri == os.path.join(root, "videos", "v2.webm")
    assert samples[0].captions == ["a man runs", "running"]
    assert all(s.media == "video" and s.split == "train" for s in samples)
    assert {p.id: p.reason for p in report.problems} == {
        "gone": "missing file",
        "nocap": "no captions",
        "v1": "duplicate id",
        "train#6": "entry without a videoID",
    }
    assert report.read == 7
    [v3] = reader.samples("val", ReadReport())
    assert v3.uri == os.path.join(root, "videos", "v3.mp4")


def test_load_split_decodes_videos_and_balances(tmp_path):
    loaded = load_split(open_dataset(make_vatex_dir(tmp_path)), "train", CFG, progress=False)
    assert loaded.media == "video"
    assert loaded.ids == ["v1", "v2"]
    assert loaded.pixels.shape == (2, 4, 8, 8, 3)
    report = loaded.report
    assert report.read == report.used + len(report.problems) == 7
    trunc = [p for p in report.problems if p.id == "trunc"]
    assert len(trunc) == 1 and trunc[0].uri.endswith("trunc.mp4")
    assert trunc[0].reason.startswith(("corrupt video", "no video stream", "no frames"))
    texts, index = loaded.caption_pairs()
    assert texts == ["a man runs", "running", "a dog jumps"] and index.tolist() == [0, 0, 1]


def test_single_json_file_names_its_split(tmp_path):
    root = make_vatex_dir(tmp_path)
    reader = open_dataset(os.path.join(root, "vatex_validation_v1.0.json"), media_root=os.path.join(root, "videos"))
    assert reader.splits() == ["val"]
    assert [s.id for s in reader.samples(None, ReadReport())] == ["v3"]


def test_wrong_top_level_structure_names_the_file(tmp_path):
    path = write_file(tmp_path / "vatex_test.json", json.dumps({"videoID": "x"}).encode())
    reader = VatexReader({"test": path}, str(tmp_path))
    with pytest.raises(FastslowError, match="vatex_test.json: expected a JSON list"):
        list(reader.samples("test", ReadReport()))


def test_reads_from_s3(tmp_path, s3_bucket):
    root = make_vatex_dir(tmp_path / "local")
    for path in storage.list_files(root):
        storage.upload_file(path, storage.join(s3_bucket, "vatex", os.path.relpath(path, root)))
    reader = open_dataset(f"{s3_bucket}/vatex/")
    loaded = load_split(reader, "train", CFG, progress=False)
    assert loaded.ids == ["v1", "v2"]
    assert loaded.uris[1] == f"{s3_bucket}/vatex/videos/v2.webm"
    assert {p.id: p.reason for p in loaded.report.problems}["gone"] == "missing file"
    assert loaded.report.balanced
