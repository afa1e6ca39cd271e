"""The project's one config system: dataclasses, filled from YAML with `key.sub=value` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import yaml

from fastslow import storage
from fastslow.errors import FastslowError
from fastslow.distill import DistillConfig
from fastslow.models.config import FastConfig, dataclass_from_dict, dataclass_to_dict
from fastslow.models.slow import SlowConfig
from fastslow.slow_training import SlowTrainConfig
from fastslow.training import FastTrainConfig

T = TypeVar("T")


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
    num_frames: int = 8


@dataclass
class FastRunConfig:
    """Everything one Fast training run needs."""

    model: FastConfig = field(default_factory=FastConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: FastTrainConfig = field(default_factory=FastTrainConfig)
    out: str = "runs/fast"


@dataclass
class SlowRunConfig:
    """Everything one Slow training run needs."""

    model: SlowConfig = field(default_factory=SlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: SlowTrainConfig = field(default_factory=SlowTrainConfig)
    out: str = "runs/slow"


@dataclass
class DistillTrainConfig(FastTrainConfig):
    """Fast's schedule; batches hold neighbours by default, the candidates the teacher scored."""

    neighbours: int = 3


@dataclass
class DistillRunConfig:
    """A Fast student trained with a frozen Slow teacher's soft targets over nearest-neighbour batches."""

    teacher: str = ""  # the Slow checkpoint (local or s3://)
    model: FastConfig = field(default_factory=FastConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: DistillTrainConfig = field(default_factory=DistillTrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    out: str = "runs/fast_distilled"


def apply_override(tree: dict, override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, booleans, null, lists)."""
    if "=" not in override:
        raise FastslowError(f"override {override!r}: expected key=value, e.g. train.epochs=5")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise FastslowError(f"override {override!r}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_config(cls: type[T], path: str | None = None, overrides: list[str] = ()) -> T:
    """Build `cls` from an optional YAML file (local or s3://) and overrides, rejecting unknown keys."""
    tree: dict = {}
    if path:
        try:
            tree = yaml.safe_load(storage.read_text(path)) or {}
        except yaml.YAMLError as e:
            raise FastslowError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise FastslowError(f"{path}: expected a mapping at the top level")
    for override in overrides:
        apply_override(tree, override)
    return dataclass_from_dict(cls, tree, where=path or "config")


def dump_config(cfg) -> str:
    """YAML text of a config dataclass (what a run saves beside its outputs)."""
    return yaml.safe_dump(dataclass_to_dict(cfg), sort_keys=False)
