"""Splits for datasets that carry none (tar shards, bare folders, manifests without a `split` column): every item
trains except a validation set held out by a hash of its id, so the same items are held out in every process,
run and shard order.

`data.train_split` names the training items, `data.val_split` the held-out `data.val_fraction` of them; any
other split (a test split) cannot be read from such a dataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from fastslow.data.registry import DatasetReader
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import FastslowError
from fastslow.log import get_logger

log = get_logger(__name__)


def held_out(item_id: str, fraction: float) -> bool:
    """Whether the item is in the held-out validation share (sha1 of the id: stable across processes)."""
    return int.from_bytes(hashlib.sha1(item_id.encode()).digest()[:8], "big") / 2**64 < fraction


class HashHoldout(DatasetReader):
    """A split-less reader seen as `train_split` (items not held out) and `val_split` (the held-out ones)."""

    def __init__(self, reader: DatasetReader, train_split: str | None, val_split: str | None, fraction: float):
        self.reader, self.fraction = reader, fraction
        self.train_split, self.val_split = train_split, val_split
        self.source = reader.source

    def splits(self) -> list[str]:
        return [s for s in (self.train_split, self.val_split) if s]

    def shards(self) -> list[str] | None:
        return self.reader.shards()

    def check_split(self, split: str | None) -> None:
        if split is not None and split not in self.splits():
            raise FastslowError(
                f"{self.source}: has no split information, so split {split!r} cannot be read: its items are split "
                f"only into data.train_split={self.train_split!r} and data.val_split={self.val_split!r} (a "
                f"data.val_fraction={self.fraction} share, by a hash of the id); set the split to null to read it all")

    def samples(self, split: str | None, report: ReadReport) -> Iterator[Sample]:
        self.check_split(split)
        if split is None:
            yield from self.reader.samples(None, report)
            return
        want_held_out = split == self.val_split
        if want_held_out:
            log.info("%s has no splits: validating on the %.1f%% of items held out by a hash of their ids "
                     "(data.val_fraction=%s), training on the rest", self.source, 100 * self.fraction, self.fraction)
        # The inner reader counts every item it reads; this split's report counts only this split's items.
        inner = ReadReport(source=report.source)
        seen_problems = 0
        for sample in self.reader.samples(None, inner):
            seen_problems = self._move_problems(inner, seen_problems, report, want_held_out)
            if held_out(sample.id, self.fraction) == want_held_out:
                report.read += 1
                yield sample
        self._move_problems(inner, seen_problems, report, want_held_out)

    def _move_problems(self, inner: ReadReport, start: int, report: ReadReport, want_held_out: bool) -> int:
        """Copy the inner report's new problems of this split into `report`; the new start."""
        for problem in inner.problems[start:]:
            if held_out(problem.id, self.fraction) == want_held_out:
                report.read += 1
                report.problems.append(problem)
        return len(inner.problems)


def with_splits(reader: DatasetReader, data) -> DatasetReader:
    """The reader as training reads it (`data`: a DataConfig): a split-less one split by `HashHoldout`."""
    if reader.splits() or not (data.train_split or data.val_split):
        return reader
    return HashHoldout(reader, data.train_split, data.val_split, data.val_fraction)
