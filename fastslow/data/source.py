"""Which dataset to read (DataConfig), and one split of it read and decoded into memory with its report."""

from __future__ import annotations

from dataclasses import dataclass

from fastslow.data.decode import DecodeConfig
from fastslow.data.holdout import with_splits
from fastslow.data.loaded import LoadedSplit, load_split
from fastslow.data.registry import open_dataset
from fastslow.errors import FastslowError
from fastslow.log import get_logger

log = get_logger(__name__)


@dataclass
class DataConfig:
    """Which dataset to read and how to decode it; `path` is local or `s3://`."""

    path: str = ""
    format: str = "auto"
    media_root: str | None = None
    media: str | None = None  # "image" or "video"; needed only when a dataset mixes both
    train_split: str | None = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    num_frames: int = DecodeConfig.num_frames
    # A dataset with no splits (tar shards, a bare folder, a manifest without a split column): this share of its
    # items, chosen by a hash of the id, is the val split, the rest the train split; 0: every item trains, no
    # validation (fastslow/data/holdout.py). Datasets with splits ignore it.
    val_fraction: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise FastslowError(f"data.val_fraction={self.val_fraction}: expected 0 <= data.val_fraction < 1 (the "
                                f"share of a dataset with no splits held out for validation, e.g. 0.05; 0: none)")


def load_data_split(data: DataConfig, split: str | None, image_size: int, progress: bool = True,
                    fit: str = "crop") -> LoadedSplit:
    """Read and decode one split of the configured dataset at `image_size` made square by `fit` (the model's:
    decode_fit), logging what was skipped."""
    if not data.path:
        raise FastslowError("data.path is not set: pass --data PATH (a dataset file, folder or s3:// prefix)")
    reader = with_splits(open_dataset(data.path, format=data.format, media_root=data.media_root), data)
    loaded = load_split(reader, split, DecodeConfig(image_size=image_size, num_frames=data.num_frames, fit=fit),
                        media=data.media, progress=progress)
    report = loaded.report
    log.info(report.summary())
    for problem in report.problems[:10]:
        log.warning("skipped %s (%s): %s", problem.id, problem.uri, problem.reason)
    if len(report.problems) > 10:
        log.warning("... and %d more skipped items", len(report.problems) - 10)
    if not loaded.ids:
        raise FastslowError(f"{data.path}: split {split!r} has no usable items ({report.summary()})")
    return loaded


