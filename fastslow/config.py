"""The project's one config system: dataclasses, filled from YAML with `key.sub=value` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import yaml

from fastslow import storage
from fastslow.train.distillation import DistillConfig
from fastslow.data.source import DataConfig  # noqa: F401  (part of the run configs' public names)
from fastslow.devices import AUTO, check_setting
from fastslow.errors import FastslowError
from fastslow.index.shards import IndexSpec
from fastslow.models.config import FastConfig, dataclass_from_dict, dataclass_to_dict
from fastslow.models.slow import SlowConfig
from fastslow.train.slow_training import SlowTrainConfig
from fastslow.train.teacher_captions import TeacherCaptionConfig
from fastslow.train.fast_training import FastTrainConfig

T = TypeVar("T")


@dataclass
class JobConfig:
    """How a training run is placed on a Ray cluster (`python -m jobs.<name>`); `fastslow train` ignores it."""

    num_workers: int = 1
    use_gpu: bool | str = "auto"  # auto: when the cluster has GPUs (cluster/resources.py)
    cpus_per_worker: float = 1.0
    run_name: str = ""  # default: the basename of `out`; a resubmitted run with the same name resumes
    storage: str = ""  # Ray Train's storage path (local or s3://); default: <out>/ray_train
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 = at the end of every epoch
    max_failures: int = 3  # worker failures survived (each restarts from the last checkpoint)
    log_every: int = 10  # print a progress line every this many steps

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise FastslowError(f"job.num_workers: must be at least 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise FastslowError(f"job.cpus_per_worker: must be positive, got {self.cpus_per_worker}")
        if self.checkpoint_every < 0 or self.log_every < 1:
            raise FastslowError("job.checkpoint_every must be >= 0 and job.log_every >= 1")
        check_setting("job.use_gpu", self.use_gpu, allow_bool=True)


@dataclass
class FastRunConfig:
    """Everything one Fast training run needs."""

    model: FastConfig = field(default_factory=FastConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: FastTrainConfig = field(default_factory=FastTrainConfig)
    out: str = "runs/fast"
    # A pretrained Fast checkpoint to fine-tune (from `fastslow pretrained fast`); its own config then replaces
    # `model`, and `trainable` says what trains: projections (and the logit scale), text (the text tower too), all.
    init: str = ""
    trainable: str = "projections"
    job: JobConfig = field(default_factory=JobConfig)


@dataclass
class SlowRunConfig:
    """Everything one Slow training run needs."""

    model: SlowConfig = field(default_factory=SlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: SlowTrainConfig = field(default_factory=SlowTrainConfig)
    out: str = "runs/slow"
    # A Slow checkpoint to fine-tune (e.g. a BLIP from `fastslow pretrained slow`); its own config then replaces
    # `model`. "" trains `model` from scratch.
    init: str = ""
    job: JobConfig = field(default_factory=JobConfig)


@dataclass
class DistillTrainConfig(FastTrainConfig):
    """Fast's schedule; batches hold neighbours by default, the candidates the teacher scored."""

    neighbours: int = 3


@dataclass
class TransferSetConfig(TeacherCaptionConfig):
    """Uncaptioned items the teacher captions for the student (fastslow/teacher_captions.py); off while `items` is empty."""

    items: str = ""  # a folder, dataset file or s3:// prefix; captions it may have are not used
    fast: str = ""  # the Fast checkpoint that shortlists each item's captions from the training captions


@dataclass
class DistillRunConfig:
    """A Fast student trained with a frozen Slow teacher's soft targets over nearest-neighbour batches,
    optionally over a transfer set of uncaptioned items captioned by the teacher."""

    teacher: str = ""  # the Slow checkpoint (local or s3://)
    model: FastConfig = field(default_factory=FastConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: DistillTrainConfig = field(default_factory=DistillTrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    transfer: TransferSetConfig = field(default_factory=TransferSetConfig)
    out: str = "runs/fast_distilled"
    job: JobConfig = field(default_factory=JobConfig)


@dataclass
class EmbedJobConfig:
    """How indexing places its work: embedding actors, their mini-batch, GPUs per actor."""

    concurrency: int | str = "auto"  # Fast-embedding actors in the pool; auto: one per GPU, else one per CPU
    batch_size: int = 64  # images (or videos) per forward pass inside an actor
    num_gpus: float | str = "auto"  # per actor; auto: 1 where the cluster has GPUs, else 0
    # CPUs each actor reserves (a fraction lets a build share a small cluster with a Serve app, as an append does)
    cpus_per_actor: float = 1.0
    partition_size: int = 256  # items per partition: the unit that is written, and rerun after a failure

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.partition_size < 1:
            raise FastslowError("embed: batch_size and partition_size must be >= 1")
        if not self.cpus_per_actor > 0:
            raise FastslowError(f"embed.cpus_per_actor: must be more than 0, got {self.cpus_per_actor}")
        if self.concurrency != AUTO and (isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int)
                                         or self.concurrency < 1):
            raise FastslowError(f"embed.concurrency: expected 'auto' or a whole number >= 1, got {self.concurrency!r}")
        check_setting("embed.num_gpus", self.num_gpus)


@dataclass
class IndexRunConfig:
    """One index build (`python -m jobs.build_index`): what to embed with which model, and how to index it."""

    checkpoint: str = ""  # the Fast checkpoint that embeds the items (local or s3://)
    data: DataConfig = field(default_factory=lambda: DataConfig(train_split=None, val_split=None, test_split=None))
    split: str | None = None  # None: every item of the dataset
    index: IndexSpec = field(default_factory=IndexSpec)
    root: str = "runs/index"  # holds versions/, builds/ and the CURRENT pointer (local or s3://)
    version: str = ""  # default: derived from the model, the items and these settings
    embed: EmbedJobConfig = field(default_factory=EmbedJobConfig)
    # Fields of each item's metadata (img2dataset's .json) left out of the index and its answers: exif is a
    # JSON text of its own, often kilobytes. [] keeps everything.
    metadata_drop: list[str] = field(default_factory=lambda: ["exif"])
    # Add the collection's new items to the live version (a new version sharing its shards' files; new items are
    # those whose ids it does not hold, and tar shards none of whose members it holds) instead of indexing all.
    append: bool = False
    compact_at: float = 0.25  # a changed shard whose added + deleted items pass this share of its own is rebuilt
    keep_versions: int | None = 5  # after a publish, older versions beyond the live one and this many go; null: none


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
