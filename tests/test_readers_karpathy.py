"""Karpathy-format reader (Flickr30K / COCO), locally and on S3."""

from __future__ import annotations

import json
import os

import pytest
from media_fixtures import make_jpeg_bytes, make_png_bytes, random_bytes, write_file

from fastslow import storage
from fastslow.data import DecodeConfig, KarpathyReader, ReadReport, load_split, open_dataset
from fastslow.errors import FastslowError

CFG = DecodeConfig(image_size=8, num_frames=2)


def _entry(filename, split="test", captions=("a dog",), **extra):
    return {"filename": filename, "split": split, "sentences": [{"raw": c} for c in captions], **extra}


def make_karpathy_dir(root) -> str:
    """dataset_flickr30k.json + images/: 2 good test images, a corrupt one, a missing one, malformed entries."""
    images = [
        _entry("a.jpg", captions=["a red square", "red"]),
        _entry("b.png", captions=["a blue square"]),
        _entry("corrupt.jpg"),
        _entry("gone.jpg"),
        _entry("train1.jpg", split="train"),
        _entry("rest1.jpg", split="restval"),
        _entry("val1.jpg", split="val"),
        {"split": "test", "sentences": [{"raw": "no filename"}]},
        _entry("nocap.jpg", captions=()),
        _entry("a.jpg", captions=["duplicate of a"]),
        {"filename": "nosplit.jpg", "sentences": [{"raw": "x"}]},
        "not an object",
    ]
    write_file(os.path.join(root, "dataset_flickr30k.json"), json.dumps({"images": images}).encode())
    write_file(os.path.join(root, "images", "a.jpg"), make_jpeg_bytes(color=(220, 20, 20)))
    write_file(os.path.join(root, "images", "b.png"), make_png_bytes(color=(20, 20, 220)))
    write_file(os.path.join(root, "images", "corrupt.jpg"), random_bytes())
    for name in ("train1.jpg", "rest1.jpg", "val1.jpg", "nocap.jpg"):
        write_file(os.path.join(root, "images", name), make_jpeg_bytes())
    return str(root)


def _problems(report):
    return {p.id: p.reason for p in report.problems}


def test_reads_test_split_and_reports_bad_entries(tmp_path):
    root = make_karpathy_dir(tmp_path)
    reader = KarpathyReader(os.path.join(root, "dataset_flickr30k.json"), os.path.join(root, "images"))
    assert reader.splits() == ["test", "train", "val"]
    report = ReadReport()
    samples = list(reader.samples("test", report))
    assert [s.id for s in samples] == ["a", "b", "corrupt", "gone"]
    assert samples[0].captions == ["a red square", "red"]
    assert samples[0].uri == os.path.join(root, "images", "a.jpg")
    assert all(s.media == "image" and s.split == "test" for s in samples)
    problems = _problems(report)
    assert problems == {
        "#7": "entry without a filename",
        "nocap": "no captions",
        "a": "duplicate id",
        "nosplit": "missing split",
        "#11": "entry is not a JSON object",
    }
    assert report.read == 9


def test_restval_counts_as_train(tmp_path):
    root = make_karpathy_dir(tmp_path)
    reader = KarpathyReader(os.path.join(root, "dataset_flickr30k.json"), os.path.join(root, "images"))
    report = ReadReport()
    assert [s.id for s in reader.samples("train", report)] == ["train1", "rest1"]
    with pytest.raises(FastslowError, match="no split 'restval'; splits: test, train, val"):
        list(reader.samples("restval", ReadReport()))


def test_load_split_decodes_and_balances(tmp_path):
    root = make_karpathy_dir(tmp_path)
    loaded = load_split(open_dataset(root), "test", CFG, progress=False)
    assert loaded.ids == ["a", "b"]
    assert loaded.pixels.shape == (2, 8, 8, 3)
    assert loaded.pixels[0, 4, 4, 0] > 150 and loaded.pixels[1, 4, 4, 2] > 150
    assert loaded.report.read == loaded.report.used + len(loaded.report.problems)
    problems = _problems(loaded.report)
    assert problems["corrupt"] == "not an image"
    assert problems["gone"] == "missing file"
    assert loaded.report.used == 2


def test_coco_filepath_prefixes_id_and_uri(tmp_path):
    doc = {"images": [_entry("COCO_val2014_1.jpg", filepath="val2014", cocoid=1)]}
    path = write_file(tmp_path / "dataset_coco.json", json.dumps(doc).encode())
    write_file(tmp_path / "imgs" / "val2014" / "COCO_val2014_1.jpg", make_jpeg_bytes())
    [s] = KarpathyReader(path, str(tmp_path / "imgs")).samples(None, ReadReport())
    assert s.id == "val2014/COCO_val2014_1"
    assert s.uri == str(tmp_path / "imgs" / "val2014" / "COCO_val2014_1.jpg")
    assert s.meta == {"cocoid": 1}


def test_wrong_top_level_structure_names_the_file(tmp_path):
    path = write_file(tmp_path / "dataset_x.json", json.dumps({"images": {"a": 1}}).encode())
    with pytest.raises(FastslowError, match="dataset_x.json: expected a JSON object with an 'images' list"):
        KarpathyReader(path, str(tmp_path)).splits()
    with pytest.raises(FastslowError, match="nope.json: no such file"):
        list(KarpathyReader(str(tmp_path / "nope.json"), str(tmp_path)).samples(None, ReadReport()))


def test_reads_from_s3(tmp_path, s3_bucket):
    root = make_karpathy_dir(tmp_path / "local")
    for path in storage.list_files(root):
        storage.upload_file(path, storage.join(s3_bucket, "flickr", os.path.relpath(path, root)))
    reader = open_dataset(storage.join(s3_bucket, "flickr"))
    assert isinstance(reader, KarpathyReader)
    assert reader.image_root == f"{s3_bucket}/flickr/images"
    loaded = load_split(reader, "test", CFG, progress=False)
    assert loaded.ids == ["a", "b"]
    assert loaded.uris[0] == f"{s3_bucket}/flickr/images/a.jpg"
    assert _problems(loaded.report)["gone"] == "missing file"
    assert _problems(loaded.report)["corrupt"] == "not an image"
    assert loaded.report.balanced
