"""Datasets with no split information (img2dataset tar shards here) train without split settings: every item
trains but a validation share held out by a hash of the id, the same in every run and shard order; a split
they cannot have is refused naming the settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import tiny_train_args
from synth_shards import synth_as_webdataset

from fastslow.data import ReadReport, WebDatasetReader, open_dataset
from fastslow.data.holdout import HashHoldout, held_out, with_splits
from fastslow.data.source import DataConfig
from fastslow.errors import FastslowError


@pytest.fixture(scope="module")
def shards(tiny_corpus, tmp_path_factory) -> dict:
    """The tiny images (70) as img2dataset webdataset shards: {"dir", "written"}."""
    out = str(tmp_path_factory.mktemp("unsplit") / "shards")
    return {"dir": out, "written": synth_as_webdataset(os.path.join(tiny_corpus, "images"), out, 3)}


def _ids(reader, split, report=None):
    return [s.id for s in reader.samples(split, report or ReadReport())]


def test_train_and_val_partition_the_items_by_a_stable_hash(shards):
    data = DataConfig(path=shards["dir"], val_fraction=0.2)
    reader = with_splits(open_dataset(shards["dir"]), data)
    assert isinstance(reader, HashHoldout) and reader.splits() == ["train", "val"]
    train_report, val_report = ReadReport(), ReadReport()
    train, val = _ids(reader, "train", train_report), _ids(reader, "val", val_report)
    assert sorted(train + val) == sorted(shards["written"]) and not set(train) & set(val)
    assert val == [i for i in sorted(shards["written"]) if held_out(i, 0.2)] and 4 <= len(val) <= 24
    assert (train_report.read, val_report.read) == (len(train), len(val))  # each split counts its own items
    # The same items whatever the shard order, in a fresh reader.
    backwards = HashHoldout(WebDatasetReader(sorted(open_dataset(shards["dir"]).shards(), reverse=True)),
                            "train", "val", 0.2)
    assert sorted(_ids(backwards, "val")) == sorted(val)
    with pytest.raises(FastslowError, match="data.train_split='train' and data.val_split='val'"):
        _ids(reader, "test")
    assert sorted(_ids(reader, None)) == sorted(shards["written"])


def test_datasets_with_splits_and_bad_fractions(tiny_corpus):
    karpathy = open_dataset(os.path.join(tiny_corpus, "images"))
    assert with_splits(karpathy, DataConfig()) is karpathy
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(FastslowError, match="data.val_fraction"):
            DataConfig(val_fraction=bad)


def test_fastslow_train_on_unsplit_shards_needs_no_split_settings(shards, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fastslow", "train", "fast", "--data", shards["dir"], "--out",
                           str(out), "--no-progress", *tiny_train_args("fast"), "data.val_fraction=0.2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "has no splits: validating on the 20.0% of items held out by a hash of their ids" in proc.stderr
    held = sum(held_out(i, 0.2) for i in shards["written"])
    assert f"[train]: read {len(shards['written']) - held} = used" in proc.stderr
    assert (out / "checkpoint" / "config.json").exists() and json.loads((out / "history.json").read_text())
    refused = subprocess.run([sys.executable, "-m", "fastslow", "eval", "--checkpoint", str(out / "checkpoint"),
                              "--data", shards["dir"], "--split", "test"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "has no split information, so split 'test' cannot be read" in refused.stderr
    assert "data.val_fraction" in refused.stderr
