"""Splits for datasets that carry none (tar shards, bare folders, manifests without a `split` column): every item
trains except a validation set held out by a hash of its id, so the same items are held out in every process,
run and shard order.

`data.train_split` names the training items, `data.val_split` the held-out `data.val_fraction` of them (none
with `data.val_fraction=0` or `data.val_split=null`: then every item trains); any other split (a test split)
cannot be read from such a dataset. Every training and evaluation read goes through `with_splits`; the index
build reads the dataset whole and does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from fastslow.data.registry import DatasetReader, open_dataset
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import FastslowError
from fastslow.log import get_logger

log = get_logger(__name__)

# What has been said about which dataset in this process: one line per run, not one per split read.
_told: set[tuple] = set()


def held_out(item_id: str, fraction: float) -> bool:
    """Whether the item is in the held-out validation share (sha1 of the id: stable across processes)."""
    return int.from_bytes(hashlib.sha1(item_id.encode()).digest()[:8], "big") / 2**64 < fraction


def percent(share: float) -> str:
    """A share as a short percentage: 0.05 -> '5%', 0.125 -> '12.5%'."""
    return f"{round(100 * share, 2):g}%"


class HashHoldout(DatasetReader):
    """A split-less reader seen as `train_split` (items not held out) and `val_split` (the held-out ones)."""

    def __init__(self, reader: DatasetReader, train_split: str | None, val_split: str | None, fraction: float):
        self.reader, self.fraction = reader, fraction
        self.train_split, self.val_split = train_split, val_split
        self.source = reader.source

    def splits(self) -> list[str]:
        return [s for s in (self.train_split, self.val_split if self.fraction > 0 else None) if s]

    def shards(self) -> list[str] | None:
        return self.reader.shards()

    def check_split(self, split: str | None) -> None:
        if split is None or split in self.splits():
            return
        if split == self.val_split:  # val_fraction=0: nothing is held out
            raise FastslowError(
                f"{self.source} has no split information and data.val_fraction=0 holds none of its items out, so "
                f"{split!r} cannot be read; set data.val_fraction above 0 (e.g. 0.05) to validate on that share, "
                f"or data.val_split=null")
        raise FastslowError(
            f"{self.source} has no split information: {split!r} cannot be read; its items split only into "
            f"{self._split_names()}; set data.test_split=null (fastslow eval: --split all) to read every item")

    def _split_names(self) -> str:
        """The splits this dataset offers, with the settings that make them."""
        train = f"data.train_split={self.train_split!r}"
        if not self.val_split:
            return f"{train} (every item; data.val_split=null)"
        return (f"{train} and data.val_split={self.val_split!r} (the data.val_fraction={self.fraction} share, "
                f"held out by a hash of the id)")

    def samples(self, split: str | None, report: ReadReport) -> Iterator[Sample]:
        self.check_split(split)
        if split is None:
            yield from self.reader.samples(None, report)
            return
        want_held_out = split == self.val_split
        # The inner reader counts every item it reads; this split's report counts only this split's items, or
        # `read = used + reported` would not hold for it.
        inner = ReadReport(source=report.source)
        seen_problems, counts = 0, [0, 0]  # counts: [kept for training, held out]
        for sample in self.reader.samples(None, inner):
            seen_problems = self._move_problems(inner, seen_problems, report, want_held_out)
            out = held_out(sample.id, self.fraction)
            counts[out] += 1
            if out == want_held_out:
                report.read += 1
                yield sample
        self._move_problems(inner, seen_problems, report, want_held_out)
        self._tell(*counts)
        if split == self.train_split and self.val_split in self.splits() and counts[0] and not counts[1]:
            # Said now, before training: validation would find nothing only after the whole run.
            raise FastslowError(
                f"{self.source} has no split information and data.val_fraction={self.fraction} holds out none of "
                f"its {counts[0]} items for data.val_split={self.val_split!r}; raise data.val_fraction, or set it "
                f"to 0 to train on every item without validation")

    def _move_problems(self, inner: ReadReport, start: int, report: ReadReport, want_held_out: bool) -> int:
        """Copy the inner report's new problems of this split into `report`; the new start."""
        for problem in inner.problems[start:]:
            if held_out(problem.id, self.fraction) == want_held_out:
                report.read += 1
                report.problems.append(problem)
        return len(inner.problems)

    def _tell(self, kept: int, out: int) -> None:
        """The one INFO line that says how this split-less dataset is split (once per process)."""
        key = (self.source, self.train_split, self.val_split, self.fraction)
        if key in _told:
            return
        _told.add(key)
        if self.fraction == 0:
            why = "data.val_split=null" if not self.val_split else "data.val_fraction=0"
            log.info("%s has no splits: data.train_split=%r trains on every item (%d), no validation (%s)",
                     self.source, self.train_split, kept, why)
            return
        log.info("%s has no splits: data.train_split=%r trains on the %s of items not held out by a hash of their "
                 "ids (%d items), data.val_split=%r validates on the other %s (data.val_fraction=%s: %d items)",
                 self.source, self.train_split, percent(1 - self.fraction), kept, self.val_split,
                 percent(self.fraction), self.fraction, out)


def with_splits(reader: DatasetReader, data) -> DatasetReader:
    """The reader as training and evaluation read it (`data`: a DataConfig): a split-less one as `HashHoldout`."""
    if reader.splits() or not (data.train_split or data.val_split):
        return reader
    # No validation split asked for: nothing is held out, every item trains.
    fraction = data.val_fraction if data.val_split else 0.0
    return HashHoldout(reader, data.train_split, data.val_split, fraction)


def val_split_to_read(data) -> str | None:
    """The split training validates on: `data.val_split`, or None where nothing is held out of a split-less dataset
    (`data.val_fraction=0`), so the run trains without validation metrics."""
    if not data.val_split or data.val_fraction > 0:
        return data.val_split
    reader = open_dataset(data.path, format=data.format, media_root=data.media_root)
    return data.val_split if reader.splits() else None
