"""Runs the rows of the benchmark table: one place that knows the sizes, models and schedules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fastslow.config import DataConfig
from fastslow.eval import chance_metrics
from fastslow.log import get_logger
from fastslow.models.config import FastConfig, TextTowerConfig, VisionTowerConfig
from fastslow.models.fast import FastModel
from fastslow.runs import load_data_split
from fastslow.synth import ensure_synth
from fastslow.training import FastTrainConfig, evaluate_fast, train_fast

log = get_logger(__name__)

# The offline default: pretrained EfficientNet-Lite0 and MiniLM towers, frozen, with trained heads.
DEFAULT_FAST = FastConfig(vision=VisionTowerConfig(kind="efficientnet_lite0", image_size=128),
                          text=TextTowerConfig(kind="minilm"), embed_dim=256, head_hidden=1024)
TINY_FAST = FastConfig(vision=VisionTowerConfig(kind="tiny_cnn", image_size=32, trainable=True, width=16),
                       text=TextTowerConfig(kind="tiny_transformer", trainable=True, width=32, depth=1, heads=2),
                       embed_dim=32, head_hidden=0)

SIZES = {
    "tiny": {"fast": TINY_FAST, "train": FastTrainConfig(epochs=2, batch_size=16, warmup_steps=2, lr=1e-3)},
    "quick": {"fast": DEFAULT_FAST, "train": FastTrainConfig(epochs=40, batch_size=256, warmup_steps=50, lr=1e-3)},
    "full": {"fast": DEFAULT_FAST, "train": FastTrainConfig(epochs=40, batch_size=256, warmup_steps=50, lr=1e-3)},
}
NUM_FRAMES = 8


def data_config(root: Path, modality: str) -> DataConfig:
    """The synthetic benchmark's images (Karpathy format) or videos (VATEX format), read by the standard readers."""
    return DataConfig(path=str(root / ("images" if modality == "image" else "videos")), num_frames=NUM_FRAMES)


def run_modality(size: str, seed: int, root: Path, modality: str, progress: bool) -> list[dict]:
    """Train and evaluate the Fast model on one modality; returns its table rows (chance included)."""
    spec = SIZES[size]
    data = data_config(root, modality)
    fast_cfg = spec["fast"]
    train = load_data_split(data, "train", fast_cfg.vision.image_size, progress)
    test = load_data_split(data, "test", fast_cfg.vision.image_size, progress)
    model = FastModel(fast_cfg)
    train_fast(model, train, replace(spec["train"], seed=seed), progress=progress)
    result = evaluate_fast(model, test, progress=progress)
    chance = chance_metrics(len(test.ids))
    log.info("%s fast: %s", modality, result.metrics)
    return [
        {"modality": modality, "method": "chance", "k": None, **{k: round(v, 3) for k, v in chance.items()},
         "ms_per_query": None, "queries": result.num_queries, "gallery": result.gallery_size},
        result.row(modality, "fast"),
    ]


def run_table(size: str, seed: int, root: Path, modalities: list[str], progress: bool = True) -> tuple[list[dict], list[str]]:
    """All rows of the table for the given size."""
    ensure_synth(root, seed=seed, size=size, progress=progress)
    rows = []
    for modality in modalities:
        rows += run_modality(size, seed, root, modality, progress)
    notes = [
        "Every caption of the test split is a query; the gallery is the test split's items, each scene with its "
        "swapped-attribute and swapped-relation twins (videos: time-reversed, colour- and direction-swapped twins).",
        "Ranks count ties against the query. ms_per_query: text encoding plus scoring the whole gallery, CPU.",
        f"Fast: {spec_description(SIZES[size]['fast'])}.",
    ]
    return rows, notes


def spec_description(cfg: FastConfig) -> str:
    frozen = lambda t: "trained" if t.trainable else "frozen"  # noqa: E731
    return (f"vision {cfg.vision.kind} ({frozen(cfg.vision)}, {cfg.vision.image_size}px), text {cfg.text.kind} "
            f"({frozen(cfg.text)}), {'MLP' if cfg.head_hidden else 'linear'} heads to {cfg.embed_dim}-d")
