"""open_dataset: format auto-detection, explicit formats, and its errors."""

from __future__ import annotations

import json
import os

import pytest
from media_fixtures import make_jpeg_bytes, make_tar_bytes, write_file

from fastslow.data import KarpathyReader, ManifestReader, VatexReader, WebDatasetReader, open_dataset
from fastslow.data.registry import split_from_name
from fastslow.errors import FastslowError

KARPATHY = {"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": "x"}]}]}
VATEX = [{"videoID": "v", "enCap": ["x"]}]


def test_detects_each_format(tmp_path):
    k = write_file(tmp_path / "k" / "dataset_coco.json", json.dumps(KARPATHY).encode())
    reader = open_dataset(k)
    assert isinstance(reader, KarpathyReader) and reader.image_root == str(tmp_path / "k")

    v = write_file(tmp_path / "v" / "my_train_captions.json", json.dumps(VATEX).encode())
    os.makedirs(tmp_path / "v" / "videos")
    reader = open_dataset(v)
    assert isinstance(reader, VatexReader) and reader.splits() == ["train"]
    assert reader.video_root == str(tmp_path / "v" / "videos")

    tar = write_file(tmp_path / "w" / "0.tar", make_tar_bytes([("a.jpg", make_jpeg_bytes()), ("a.txt", b"x")]))
    assert isinstance(open_dataset(tar), WebDatasetReader)
    assert isinstance(open_dataset(str(tmp_path / "w")), WebDatasetReader)

    for ext in ("csv", "jsonl", "parquet"):
        assert isinstance(open_dataset(str(tmp_path / f"m.{ext}")), ManifestReader)  # read lazily


def test_karpathy_folder_prefers_images_subfolder_and_media_root(tmp_path):
    write_file(tmp_path / "dataset_flickr30k.json", json.dumps(KARPATHY).encode())
    assert open_dataset(str(tmp_path)).image_root == str(tmp_path)
    os.makedirs(tmp_path / "images")
    assert open_dataset(str(tmp_path)).image_root == str(tmp_path / "images")
    assert open_dataset(str(tmp_path), media_root="/data/flickr").image_root == "/data/flickr"


def test_vatex_folder_one_split_per_file(tmp_path):
    for name in ("vatex_training_v1.0.json", "vatex_validation_v1.0.json", "vatex_public_test_english_v1.1.json"):
        write_file(tmp_path / name, json.dumps(VATEX).encode())
    reader = open_dataset(str(tmp_path), format="vatex")
    assert sorted(reader.splits()) == ["test", "train", "val"]
    assert reader.video_root == str(tmp_path)


def test_vatex_files_with_the_same_split_keep_their_names(tmp_path):
    for name in ("vatex_public_test.json", "vatex_private_test.json"):
        write_file(tmp_path / name, json.dumps(VATEX).encode())
    assert sorted(open_dataset(str(tmp_path)).splits()) == ["vatex_private_test", "vatex_public_test"]


def test_split_from_name():
    assert [split_from_name(n) for n in ("vatex_training_v1.0.json", "s3://b/x_val.json", "TEST.json", "all.json")] == [
        "train",
        "val",
        "test",
        "all",
    ]


def test_errors_name_the_input(tmp_path):
    with pytest.raises(FastslowError, match="'coco': unknown dataset format; known: auto, karpathy, vatex, webdataset, img2dataset_parquet, manifest, folder"):
        open_dataset(str(tmp_path), format="coco")
    bad = write_file(tmp_path / "broken.json", b'{"images": [')
    with pytest.raises(FastslowError, match=r"broken\.json: not valid JSON \(line 1"):
        open_dataset(bad)
    other = write_file(tmp_path / "other.json", b'{"annotations": []}')
    with pytest.raises(FastslowError, match="other.json: JSON is neither Karpathy"):
        open_dataset(other)
    unknown = write_file(tmp_path / "x.zip", b"PK")
    with pytest.raises(FastslowError, match="x.zip: unknown dataset format; known: karpathy, vatex, webdataset, img2dataset_parquet, manifest, folder"):
        open_dataset(unknown)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FastslowError, match="empty: folder holds no dataset_\\*.json, vatex_\\*.json, \\*.tar or image/video files"):
        open_dataset(str(tmp_path / "empty"))
    with pytest.raises(FastslowError, match="nothing-here: no such file or folder"):
        open_dataset(str(tmp_path / "nothing-here"))
    with pytest.raises(FastslowError, match="missing.json: no such file"):
        open_dataset(str(tmp_path / "missing.json"))
    write_file(tmp_path / "two" / "dataset_a.json", b"{}")
    write_file(tmp_path / "two" / "dataset_b.json", b"{}")
    with pytest.raises(FastslowError, match="several dataset_\\*.json files \\(dataset_a.json, dataset_b.json\\)"):
        open_dataset(str(tmp_path / "two"))


def test_a_dataset_without_splits_names_the_split_settings(tmp_path):
    tar = write_file(tmp_path / "0.tar", make_tar_bytes([("a.jpg", make_jpeg_bytes()), ("a.txt", b"x")]))
    reader = open_dataset(tar)
    reader.check_split(None)  # read whole
    with pytest.raises(FastslowError, match=r"0\.tar has no split information: 'test' cannot be read; set that split "
                                            r"to null .*data\.test_split=null.*--split all.*data\.val_fraction"):
        reader.check_split("test")
