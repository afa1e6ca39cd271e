"""Datasets with no split information (img2dataset tar shards, a bare folder) train without split settings: every
item trains but a validation share held out by a hash of the id, the same in every run and shard order; a split
they cannot have is refused naming the settings. Datasets with splits are read as before."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from helpers import tiny_train_args
from media_fixtures import make_png_bytes, random_bytes, write_file
from synth_shards import synth_as_webdataset

from fastslow.config import FastRunConfig, load_config
from fastslow.data import DecodeConfig, ReadReport, WebDatasetReader, load_split, open_dataset
from fastslow.data import holdout
from fastslow.data.holdout import HashHoldout, held_out, val_split_to_read, with_splits
from fastslow.data.rows import sample_rows
from fastslow.data.source import DataConfig
from fastslow.errors import FastslowError


@pytest.fixture(scope="module")
def shards(tiny_corpus, tmp_path_factory) -> dict:
    """The tiny images (70) as img2dataset webdataset shards: {"dir", "written"}."""
    out = str(tmp_path_factory.mktemp("unsplit") / "shards")
    return {"dir": out, "written": synth_as_webdataset(os.path.join(tiny_corpus, "images"), out, 3)}


@pytest.fixture
def said(monkeypatch) -> list[str]:
    """The holdout module's INFO lines, each dataset told afresh."""
    monkeypatch.setattr(holdout, "_told", set())
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(holdout.__name__)
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def _ids(reader, split, report=None):
    return [s.id for s in reader.samples(split, report or ReadReport())]


def test_train_and_val_partition_the_items_by_a_stable_hash(shards, said):
    data = DataConfig(path=shards["dir"], val_fraction=0.2)
    reader = with_splits(open_dataset(shards["dir"]), data)
    assert isinstance(reader, HashHoldout) and reader.splits() == ["train", "val"]
    train_report, val_report = ReadReport(), ReadReport()
    train, val = _ids(reader, "train", train_report), _ids(reader, "val", val_report)
    written = sorted(shards["written"])
    assert sorted(train + val) == written and not set(train) & set(val)
    assert val == [i for i in written if held_out(i, 0.2)] and 0.1 <= len(val) / len(written) <= 0.3
    assert (train_report.read, val_report.read) == (len(train), len(val))  # each split counts its own items
    assert _ids(reader, "val") == val and _ids(with_splits(open_dataset(shards["dir"]), data), "train") == train
    # The same items whatever the shard order, in a fresh reader.
    backwards = HashHoldout(WebDatasetReader(sorted(open_dataset(shards["dir"]).shards(), reverse=True)),
                            "train", "val", 0.2)
    assert sorted(_ids(backwards, "val")) == val
    assert sorted(_ids(reader, None)) == written
    # One line per dataset, however many splits are read (the reordered shards are named another source).
    assert said[0] == (f"{reader.source} has no splits: data.train_split='train' trains on the 80% of items not "
                       f"held out by a hash of their ids ({len(train)} items), data.val_split='val' validates on the "
                       f"other 20% (data.val_fraction=0.2: {len(val)} items)")
    assert len(said) == 2 and said[1].startswith(backwards.source)


def test_a_test_split_is_refused_naming_the_settings(shards):
    reader = with_splits(open_dataset(shards["dir"]), DataConfig(path=shards["dir"]))
    with pytest.raises(FastslowError, match=r"has no split information: 'test' cannot be read; its items split only "
                                            r"into data.train_split='train' and data.val_split='val' \(the "
                                            r"data.val_fraction=0.05 share.*set data.test_split=null"):
        _ids(reader, "test")
    # Without any training split set the reader is read as it is, and says the same settings.
    bare = with_splits(open_dataset(shards["dir"]), DataConfig(train_split=None, val_split=None))
    with pytest.raises(FastslowError, match=r"'test' cannot be read; set that split to null.*data.test_split=null"
                                            r".*data.val_fraction"):
        _ids(bare, "test")


def test_no_validation_trains_on_every_item(shards, said):
    written = sorted(shards["written"])
    for data in (DataConfig(path=shards["dir"], val_fraction=0), DataConfig(path=shards["dir"], val_split=None)):
        reader = with_splits(open_dataset(shards["dir"]), data)
        assert reader.splits() == ["train"] and sorted(_ids(reader, "train")) == written
        assert val_split_to_read(data) is None  # training runs without val metrics
    assert "trains on every item (70), no validation (data.val_fraction=0)" in said[0]
    assert "no validation (data.val_split=null)" in said[1]
    with pytest.raises(FastslowError, match="data.val_fraction=0 holds none of its items out, so 'val' cannot be"):
        _ids(with_splits(open_dataset(shards["dir"]), DataConfig(val_fraction=0)), "val")
    assert val_split_to_read(DataConfig(path=shards["dir"])) == "val"


def test_the_ray_data_rows_are_the_same_split(shards):
    data = DataConfig(path=shards["dir"], val_fraction=0.2)
    rows, report, media = sample_rows(data, "val")
    val = sorted(i for i in shards["written"] if held_out(i, 0.2))
    assert sorted(r["id"] for r in rows) == val and report.read == len(val) and media == "image"


def _unsplit_folder(root) -> list[str]:
    """A bare folder of 60 captioned images, two undecodable ones and two files that are not media: its image ids."""
    ids = []
    for i in range(60):
        ids.append(write_file(root / f"img{i:02d}.png", make_png_bytes(8, 8, (4 * i, 100, 200))))
        write_file(root / f"img{i:02d}.txt", f"image {i}".encode())
    for name in ("broken0.png", "broken1.png", "notes.bin", "other.bin"):
        write_file(root / name, random_bytes(200))
    return sorted(os.path.basename(i) for i in ids)


def test_a_folder_with_problems_reports_each_in_one_split(tmp_path):
    ids = _unsplit_folder(tmp_path)
    data = DataConfig(path=str(tmp_path), val_fraction=0.3)
    reader = with_splits(open_dataset(str(tmp_path)), data)
    cfg = DecodeConfig(image_size=8)
    train, val = (load_split(reader, split, cfg, progress=False) for split in ("train", "val"))  # they balance
    assert sorted(train.ids + val.ids) == ids and not set(train.ids) & set(val.ids)
    problems = sorted(p.id for p in train.report.problems + val.report.problems)
    assert problems == ["broken0.png", "broken1.png", "notes.bin", "other.bin"]
    assert all(held_out(p.id, 0.3) for p in val.report.problems)
    assert train.report.read + val.report.read == 64


def test_too_few_items_to_hold_any_out_is_said_before_training(tmp_path):
    write_file(tmp_path / "a.png", make_png_bytes())
    reader = with_splits(open_dataset(str(tmp_path)), DataConfig(val_fraction=0.01))
    assert held_out("a.png", 0.01) is False
    with pytest.raises(FastslowError, match="holds out none of its 1 items.*set it to 0 to train on every item"):
        _ids(reader, "train")


def test_datasets_with_splits_are_read_as_before(tiny_corpus):
    karpathy = open_dataset(os.path.join(tiny_corpus, "images"))
    assert with_splits(karpathy, DataConfig(val_fraction=0.5)) is karpathy
    assert val_split_to_read(DataConfig(path=os.path.join(tiny_corpus, "images"), val_fraction=0)) == "val"


def test_val_fraction_is_a_checked_setting():
    assert load_config(FastRunConfig, None, ["data.val_fraction=0.1"]).data.val_fraction == 0.1
    assert load_config(FastRunConfig, None, ["data.val_fraction=0"]).data.val_fraction == 0
    for bad in ("1", "1.5", "-0.1", ".nan"):
        with pytest.raises(FastslowError, match=r"data.val_fraction=.*expected 0 <= data.val_fraction < 1"):
            load_config(FastRunConfig, None, [f"data.val_fraction={bad}"])
    with pytest.raises(FastslowError, match="val_fraction: expected float, got str"):
        load_config(FastRunConfig, None, ["data.val_fraction=some"])


def test_fastslow_train_on_unsplit_shards_needs_no_split_settings(shards, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fastslow", "train", "fast", "--data", shards["dir"], "--out",
                           str(out), "--no-progress", *tiny_train_args("fast"), "data.val_fraction=0.2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    held = sum(held_out(i, 0.2) for i in shards["written"])
    kept = len(shards["written"]) - held
    line = (f"has no splits: data.train_split='train' trains on the 80% of items not held out by a hash of their "
            f"ids ({kept} items), data.val_split='val' validates on the other 20% (data.val_fraction=0.2: {held} "
            f"items)")
    assert proc.stderr.count(line) == 1, proc.stderr[-3000:]
    assert f"[train]: read {kept} = used" in proc.stderr and f"[val]: read {held} = used" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_items"] == kept and summary["val"]["gallery"] == held
    assert (out / "checkpoint" / "config.json").exists() and json.loads((out / "history.json").read_text())
    refused = subprocess.run([sys.executable, "-m", "fastslow", "eval", "--checkpoint", str(out / "checkpoint"),
                              "--data", shards["dir"], "--split", "test"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "has no split information: 'test' cannot be read" in refused.stderr
    assert "data.test_split=null" in refused.stderr and "data.val_fraction" in refused.stderr
