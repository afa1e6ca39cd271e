"""The benchmark table's sizes: each model and schedule loaded from the configs/*.yaml presets.

configs/benchmark/table.yaml names, per size and modality, the preset each model starts from and the
KEY=VALUE overrides where the table differs from it, so each setting has one source. Kept models are keyed
on what `model_depends` returns (benchmarks/model_cache.py): the loaded configs themselves.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from benchmarks.table_timing import TimingConfig
from fastslow.config import apply_override
from fastslow.config import DistillRunConfig, FastRunConfig, SlowRunConfig, load_config
from fastslow.errors import FastslowError
from fastslow.models.config import FastConfig, dataclass_from_dict
from fastslow.models.slow import SlowConfig
from fastslow.train.distillation import DistillConfig
from fastslow.train.fast_training import FastTrainConfig
from fastslow.train.slow_training import SlowTrainConfig
from fastslow.train.teacher_captions import TeacherCaptionConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TABLE_CONFIG = CONFIGS / "benchmark" / "table.yaml"


@dataclass
class Preset:
    """A preset of configs/ (a file name there) and the KEY=VALUE overrides on top of it."""

    config: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class ModalityPlan:
    fast: Preset  # its model and train sections: Fast and its schedule (the students' too)
    slow: Preset  # its model and train sections: Slow and its schedule


@dataclass
class SizePlan:
    """One size of configs/benchmark/table.yaml."""

    image: ModalityPlan
    distill: Preset  # its distill section (the soft-target term) and transfer section (the teacher captions)
    rerank_ks: list[int]
    uncaptioned: int = 0
    video: ModalityPlan | None = None  # None: the image models
    timing: TimingConfig = field(default_factory=TimingConfig)


@dataclass
class Models:
    """One modality's Fast and Slow, each with its schedule."""

    fast: FastConfig
    fast_train: FastTrainConfig
    slow: SlowConfig
    slow_train: SlowTrainConfig


@dataclass
class TableSpec:
    """Models and schedules of one benchmark size."""

    image: Models
    video: Models
    distill: DistillConfig = field(default_factory=DistillConfig)
    teacher_captions: TeacherCaptionConfig = field(default_factory=TeacherCaptionConfig)
    ks: tuple[int, ...] = (5, 10, 20, 50)
    uncaptioned: int = 0  # training-distribution images without captions: the transfer set of images' fast_distilled
    timing: TimingConfig = field(default_factory=TimingConfig)
    # The soft-target student's neighbours per anchor (the distill preset's train.neighbours): the teacher scores
    # each caption against its item's neighbours, so its batches need them even where Fast's have none.
    distill_neighbours: int = 3

    def models(self, modality: str) -> Models:
        return self.video if modality == "video" else self.image

    def soft_target_schedule(self, modality: str) -> FastTrainConfig:
        """The soft-target student's schedule: its modality's Fast schedule with the distill preset's neighbours."""
        return replace(self.models(modality).fast_train, neighbours=self.distill_neighbours)


def table_sizes(path: Path = TABLE_CONFIG) -> list[str]:
    return list(_read_plans(path))


def table_spec(size: str, path: Path = TABLE_CONFIG, overrides: list[str] = ()) -> TableSpec:
    """The models and schedules of one size, loaded from the presets `path` names, with `overrides`
    (`table_override`) on top."""
    plans = _read_plans(path)
    if size not in plans:
        raise FastslowError(f"{path}: no size {size!r} (expected one of {', '.join(plans)})")
    tree = copy.deepcopy(plans[size])  # YAML anchors share one dict between sizes: edit a copy
    for override in overrides:
        table_override(tree, override, size)
    plan = dataclass_from_dict(SizePlan, tree, where=f"{path.name}: {size}")
    image = _models(plan.image)
    video = image if plan.video is None else _models(plan.video)
    distill = _load(DistillRunConfig, plan.distill)
    if distill.train.neighbours < 1:
        raise FastslowError(f"{path.name}: {size}: the distill preset's train.neighbours={distill.train.neighbours}: "
                            "the soft-target student needs neighbour batches (1 or more), the candidates the "
                            "teacher scores")
    # The transfer section also names its items and shortlisting checkpoint: the table brings its own.
    captions = TeacherCaptionConfig(**{f.name: getattr(distill.transfer, f.name) for f in fields(TeacherCaptionConfig)})
    return TableSpec(image=image, video=video, distill=distill.distill, teacher_captions=captions,
                     ks=tuple(plan.rerank_ks), uncaptioned=plan.uncaptioned, timing=plan.timing,
                     distill_neighbours=distill.train.neighbours)


PRESETS = ("image.fast", "image.slow", "video.fast", "video.slow", "distill")


def table_override(tree: dict, override: str, size: str) -> None:
    """Apply one override to a size's plan: `PRESET:KEY=VALUE` adds KEY=VALUE to that preset's overrides
    (PRESET one of PRESETS, e.g. image.fast:train.epochs=20); `KEY=VALUE` sets a key of the size itself
    (uncaptioned=4000, rerank_ks=[5,20], timing.batch=32)."""
    if ":" in override.split("=", 1)[0]:
        preset, setting = override.split(":", 1)
        if preset not in PRESETS:
            raise FastslowError(f"override {override!r}: no preset {preset!r} (expected one of {', '.join(PRESETS)})")
        node = tree
        for part in preset.split("."):
            if not isinstance(node, dict) or part not in node:
                raise FastslowError(f"override {override!r}: the {size} size has no {preset} of its own"
                                    + (" (its videos use the image models)" if preset.startswith("video") else ""))
            node = node[part]
        if "=" not in setting:
            raise FastslowError(f"override {override!r}: expected PRESET:KEY=VALUE, e.g. image.fast:train.epochs=20")
        node["overrides"] = [*node.get("overrides", []), setting]
    else:
        apply_override(tree, override)


def _read_plans(path: Path) -> dict:
    plans = yaml.safe_load(Path(path).read_text())
    if not isinstance(plans, dict):
        raise FastslowError(f"{path}: expected a mapping of sizes at the top level")
    return plans


def _models(plan: ModalityPlan) -> Models:
    fast, slow = _load(FastRunConfig, plan.fast), _load(SlowRunConfig, plan.slow)
    return Models(fast=fast.model, fast_train=fast.train, slow=slow.model, slow_train=slow.train)


def _load(cls, preset: Preset):
    return load_config(cls, str(CONFIGS / preset.config), preset.overrides)


def model_depends(spec: TableSpec, modality: str) -> dict[str, dict]:
    """What each kept model of a modality depends on beyond the seed and the training split: its cache key.
    Slow holds no Fast config, so a change to Fast retrains Fast and its students but keeps Slow."""
    models = spec.models(modality)
    fast = {"fast": models.fast, "fast_train": models.fast_train}
    slow = {"slow": models.slow, "slow_train": models.slow_train}
    soft = {**fast, "fast_train": spec.soft_target_schedule(modality)}  # equal to Fast's where the neighbours are
    return {"fast": fast, "slow": slow, "fast_soft_targets": {**soft, **slow, "distill": spec.distill},
            "fast_teacher_captions": {**fast, **slow, "teacher_captions": spec.teacher_captions}}
