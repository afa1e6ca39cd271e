"""Runs the rows of the benchmark table: one place that knows the sizes, models and schedules.

Per modality: train Fast; train Slow; evaluate Fast, Slow over the whole gallery,
Fast then Slow at several K, and Fast distilled from Slow. Distilled Fast has
Fast's batches and schedule plus the soft-target term; for images with a transfer
set (`TableSpec.uncaptioned`) it is instead Fast over the captioned images plus
uncaptioned ones captioned by Slow, and the soft-target student stays as the row
`fast_soft_targets`. Every row ranks the same queries (every caption of the test
split) against the same gallery (the test items).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.fast_defaults import DEFAULT_FAST, VIDEO_FAST
from benchmarks.model_cache import ModelCache, split_fingerprint
from fastslow.data.source import DataConfig
from fastslow.train.distillation import DistillationLoss, DistillConfig, precompute_teacher
from fastslow.eval import chance_metrics, evaluate_embeddings, metrics_from_ranks, ranks_of_true
from fastslow.log import get_logger
from fastslow.models.config import FastConfig, TextTowerConfig, VisionTowerConfig
from fastslow.models.fast import FastModel
from fastslow.models.slow import SlowConfig
from fastslow.data.source import load_data_split
from fastslow.eval.retrieval import rerank_embedded
from fastslow.train.slow_training import SlowTrainConfig, make_slow_model, train_slow
from fastslow.inference.slow_scores import slow_features, slow_score_matrix
from fastslow.synth import ensure_synth
from fastslow.train.teacher_captions import TeacherCaptionConfig, add_teacher_captioned
from fastslow.train.fast_training import FastBatches, FastTrainConfig, train_fast
from fastslow.inference.fast_embeddings import embed_split

log = get_logger(__name__)

RERANK_KS = (5, 10, 20, 50)
NUM_FRAMES = 8


@dataclass
class TableSpec:
    """Models and schedules of one benchmark size."""

    fast: FastConfig
    fast_train: FastTrainConfig
    slow: SlowConfig
    slow_train: SlowTrainConfig
    distill: DistillConfig = field(default_factory=DistillConfig)
    ks: tuple[int, ...] = RERANK_KS
    slow_train_video: SlowTrainConfig | None = None  # videos' schedule when it differs from images'
    fast_video: FastConfig | None = None  # videos' Fast when it differs from images'
    teacher_captions: TeacherCaptionConfig = field(default_factory=TeacherCaptionConfig)
    uncaptioned: int = 0  # training-distribution images without captions: the transfer set of images' fast_distilled


# The Slow defaults are what the tuning runs found best on the quick data (2 cores); videos need more epochs.
DEFAULT_SLOW = SlowConfig()
SLOW_IMAGES = SlowTrainConfig(epochs=15)
SLOW_VIDEOS = SlowTrainConfig(epochs=25)
TINY_VISION = VisionTowerConfig(kind="tiny_cnn", image_size=32, trainable=True, width=16)
TINY_TEXT = TextTowerConfig(kind="tiny_transformer", trainable=True, width=32, depth=1, heads=2)
# Neighbour batches: +5 R@1 for Fast on quick images, and the distillation term needs them.
# As many uncaptioned images as captioned ones (quick and full train on 4,000): the measured setting.
TRANSFER_IMAGES = 4000
FAST_SCHEDULE = FastTrainConfig(epochs=60, batch_size=256, warmup_steps=50, lr=1e-3, neighbours=3)

SIZES = {
    "tiny": TableSpec(
        fast=FastConfig(vision=TINY_VISION, text=TINY_TEXT, embed_dim=32, head_hidden=0),
        fast_train=FastTrainConfig(epochs=2, batch_size=16, warmup_steps=2, neighbours=1),
        slow=SlowConfig(vision=TINY_VISION, text=TINY_TEXT, dim=32, layers=1, heads=2, ffn=64),
        slow_train=SlowTrainConfig(epochs=2, batch_size=16, warmup_steps=2),
        ks=(2, 5), uncaptioned=20),
    "quick": TableSpec(fast=DEFAULT_FAST, fast_train=FAST_SCHEDULE, slow=DEFAULT_SLOW, slow_train=SLOW_IMAGES,
                       slow_train_video=SLOW_VIDEOS, fast_video=VIDEO_FAST, uncaptioned=TRANSFER_IMAGES),
    "full": TableSpec(fast=DEFAULT_FAST, fast_train=FAST_SCHEDULE, slow=DEFAULT_SLOW, slow_train=SLOW_IMAGES,
                      slow_train_video=SLOW_VIDEOS, fast_video=VIDEO_FAST, uncaptioned=TRANSFER_IMAGES),
}


def data_config(root: Path, modality: str) -> DataConfig:
    """The synthetic benchmark's images (Karpathy format) or videos (VATEX format), read by the standard readers."""
    return DataConfig(path=str(root / ("images" if modality == "image" else "videos")), num_frames=NUM_FRAMES)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def row(modality: str, method: str, k, metrics: dict, ms: float | None, queries: int, gallery: int) -> dict:
    return {"modality": modality, "method": method, "k": k, "r1": round(metrics["r1"], 2), "r5": round(metrics["r5"], 2),
            "r10": round(metrics["r10"], 2), "median_rank": metrics["median_rank"],
            "ms_per_query": None if ms is None else round(ms, 4), "queries": queries, "gallery": gallery}


def modality_models(spec: TableSpec, modality: str) -> tuple[FastConfig, SlowTrainConfig]:
    """The Fast config and Slow schedule of one modality: videos' own where the spec gives them."""
    video = modality == "video"
    return (spec.fast_video if video and spec.fast_video else spec.fast,
            spec.slow_train_video if video and spec.slow_train_video else spec.slow_train)


def model_depends(spec: TableSpec, modality: str) -> dict[str, dict]:
    """What each kept model of a modality depends on beyond the seed and the training split: its cache key.
    Slow holds no Fast config, so a change to Fast retrains Fast and its students but keeps Slow."""
    fast_cfg, slow_train = modality_models(spec, modality)
    fast = {"fast": fast_cfg, "fast_train": spec.fast_train}
    slow = {"slow": spec.slow, "slow_train": slow_train}
    return {"fast": fast, "slow": slow, "fast_soft_targets": {**fast, **slow, "distill": spec.distill},
            "fast_teacher_captions": {**fast, **slow, "teacher_captions": spec.teacher_captions}}


def run_modality(spec: TableSpec, seed: int, root: Path, modality: str, progress: bool,
                 models_dir: Path | None = None, retrain: bool = False) -> list[dict]:
    """Train the models on one modality (or reuse them from `models_dir`) and return its table rows."""
    data = data_config(root, modality)
    fast_cfg, slow_train = modality_models(spec, modality)
    size = fast_cfg.vision.image_size
    train = load_data_split(data, "train", size, progress)
    test = load_data_split(data, "test", size, progress)
    fast_train = replace(spec.fast_train, seed=seed)
    transfer = modality == "image" and spec.uncaptioned > 0
    extra = load_data_split(DataConfig(path=str(root / "images_uncaptioned"), num_frames=NUM_FRAMES), None, size,
                            progress) if transfer else None
    cache = ModelCache(models_dir, {"seed": seed, "modality": modality, "train": split_fingerprint(train)}, retrain)
    depends = model_depends(spec, modality)

    # Batches come from an untrained Fast (their neighbours are the visual tower's before training). Every
    # model starts from the seed, so a model trained now equals the one a cache would give.
    torch.manual_seed(seed)
    batches = FastBatches(FastModel(fast_cfg), train, fast_train, progress)

    def fresh_fast(**kwargs):
        torch.manual_seed(seed)
        model = FastModel(fast_cfg)
        train_fast(model, train, fast_train, progress, batches=batches, **kwargs)
        return model

    fast, fast_seconds = cache.model("fast", fresh_fast, depends["fast"])
    n = len(test.ids)
    fast_row, emb, fast_ranks = evaluated_row(modality, "fast", fast, test, None, progress)
    rows = [row(modality, "chance", None, chance_metrics(n), None, len(emb.texts), n), fast_row]
    log.info("%s fast: R@1 %.1f (%s)", modality, fast_row["r1"], trained(fast_seconds))

    train_features = None

    def fresh_slow():
        nonlocal train_features
        torch.manual_seed(seed)
        model = make_slow_model(spec.slow, batches.texts)
        train_features = slow_features(model, train.pixels, progress=progress)
        train_slow(model, train, replace(slow_train, seed=seed), progress, features=train_features)
        return model

    slow, slow_seconds = cache.model("slow", fresh_slow, depends["slow"])
    gallery_features = slow_features(slow, test.pixels)
    # Slow over the whole gallery costs Q x N decoder passes: it ranks one caption per item (the first),
    # and the other rows are reported on those same queries too (`*_same_queries` keys) for a like-for-like check.
    subset = np.searchsorted(emb.true_index, np.arange(n))
    sub_texts, sub_true = [emb.texts[i] for i in subset], emb.true_index[subset]
    everything = torch.arange(n).expand(len(subset), n)
    slow_all, slow_all_s = timed(slow_score_matrix, slow, gallery_features, sub_texts, everything, progress=progress)
    slow_metrics = metrics_from_ranks(ranks_of_true(slow_all, sub_true))
    fast_row["r1_same_queries"] = round(metrics_from_ranks(fast_ranks[subset])["r1"], 2)
    rows.append(row(modality, "slow", None, slow_metrics, 1000 * slow_all_s / len(subset), len(subset), n))
    log.info("%s slow: R@1 %.1f (%s, %.1f ms/query over all)", modality, slow_metrics["r1"],
             trained(slow_seconds), 1000 * slow_all_s / len(subset))

    rows += rerank_rows(modality, "fast+slow", spec.ks, emb, fast_ranks, slow, gallery_features, subset, n)

    def soft_targets():
        # The teacher's features of the training items: the ones Slow trained on, or computed now.
        features = train_features if train_features is not None else slow_features(slow, train.pixels,
                                                                                    progress=progress)
        table = precompute_teacher(slow, features, batches.texts, batches.caption_item, batches.neighbour_table,
                                   progress=progress)
        return fresh_fast(loss_fn=DistillationLoss(table, spec.distill))

    soft, soft_seconds = cache.model("fast_soft_targets", soft_targets, depends["fast_soft_targets"])
    # With a transfer set the soft-target student is the ablation row; without one it is the distilled Fast.
    soft_row, soft_emb, soft_ranks = evaluated_row(modality, "fast_soft_targets" if transfer else "fast_distilled",
                                                   soft, test, subset, progress)
    rows.append(soft_row)
    log.info("%s fast, soft targets: R@1 %.1f (%s)", modality, soft_row["r1"], trained(soft_seconds))
    if transfer:
        student, student_seconds = cache.model(
            "fast_teacher_captions", lambda: train_on_teacher_captions(spec, fast_cfg, train, extra, fast, slow,
                                                                       fast_train, progress),
            # The uncaptioned images' file names follow the test split's, whose size differs between quick
            # and full; their training ids do not.
            {**depends["fast_teacher_captions"], "uncaptioned": split_fingerprint(extra, ids=False)})
        distilled_row, student_emb, student_ranks = evaluated_row(modality, "fast_distilled", student, test, subset,
                                                                  progress)
        distilled_row.update(captioned_items=len(train.ids), teacher_captioned_items=len(extra.ids))
        rows.append(distilled_row)
        log.info("%s fast distilled (teacher captions): R@1 %.1f (%s)", modality, distilled_row["r1"],
                 trained(student_seconds))
    else:
        student_emb, student_ranks = soft_emb, soft_ranks
    # The paper's full system: the distilled Fast retrieves, Slow re-ranks.
    rows += rerank_rows(modality, "fast_distilled+slow", spec.ks, student_emb, student_ranks, slow, gallery_features,
                        subset, n)
    return rows


def trained(seconds: float | None) -> str:
    return "reused" if seconds is None else f"trained in {seconds:.0f} s"


def evaluated_row(modality: str, method: str, model: FastModel, test, subset: np.ndarray | None, progress: bool):
    """A Fast model's row on the test split (with R@1 on Slow's queries, `subset`, when given), its embeddings,
    and the rank of each query's true item."""
    emb = embed_split(model, test, progress=progress)
    result = evaluate_embeddings(emb.queries, emb.gallery, emb.true_index)
    ranks = ranks_of_true(emb.queries.double() @ emb.gallery.double().T, emb.true_index)
    out = row(modality, method, None, result.metrics, result.ms_per_query + emb.encode_ms_per_query, len(emb.texts),
              len(test.ids))
    if subset is not None:
        out["r1_same_queries"] = round(metrics_from_ranks(ranks[subset])["r1"], 2)
    return out, emb, ranks


def train_on_teacher_captions(spec: TableSpec, fast_cfg: FastConfig, train, extra, fast, slow,
                              fast_train: FastTrainConfig, progress: bool) -> FastModel:
    """Fast trained on the captioned items plus the uncaptioned `extra` captioned by Slow (from Fast's shortlist)."""
    (both, captions), caption_s = timed(add_teacher_captioned, train, extra.pixels, fast, slow,
                                        slow_features(slow, extra.pixels), spec.teacher_captions,
                                        prefix="uncaptioned/", progress=progress)
    log.info("%d uncaptioned images captioned by Slow in %.0f s (%.1f captions each)", len(extra.ids), caption_s,
             sum(map(len, captions)) / max(1, len(captions)))
    student = FastModel(fast_cfg)
    train_fast(student, both, fast_train, progress)
    return student


def rerank_rows(modality: str, method: str, ks, emb, fast_ranks: np.ndarray, slow, gallery_features: torch.Tensor,
                subset: np.ndarray, n: int) -> list[dict]:
    """One row per K: the first stage's top K of every query re-ranked by Slow, timed per query."""
    rows, q = [], len(emb.texts)
    for k in ks:
        ranks, ms = rerank_embedded(emb, fast_ranks, slow, gallery_features, k)
        rows.append(row(modality, method, k, metrics_from_ranks(ranks), ms, q, n))
        rows[-1]["r1_same_queries"] = round(metrics_from_ranks(ranks[subset])["r1"], 2)
    return rows


def run_table(size: str, seed: int, root: Path, modalities: list[str], progress: bool = True,
              models_dir: Path | None = None, retrain: bool = False) -> tuple[list[dict], list[str]]:
    """All rows of the table for the given size, and the notes printed under it. Trained models are kept in
    (and reused from) `models_dir` unless it is None; `retrain` trains them all again."""
    spec = SIZES[size]
    ensure_synth(root, seed=seed, size=size, progress=progress, overrides=[f"n_uncaptioned={spec.uncaptioned}"])
    rows = []
    for modality in modalities:
        rows += run_modality(spec, seed, root, modality, progress, models_dir, retrain)
    two_fasts = spec.fast_video is not None and spec.fast_video != spec.fast
    notes = [
        "Every caption of the test split is a query; the gallery is the test split's items, each scene with its "
        "swapped-attribute and swapped-relation twins (videos: time-reversed, colour- and direction-swapped twins).",
        "Ranks count ties against the query. ms_per_query on CPU: Fast = text encoding + scoring the gallery; "
        "Slow = its decoder over every (query, item) pair, with each item's visual features computed offline like "
        "Fast's gallery embeddings; fast+slow = Fast plus the decoder over the top K (fast_distilled+slow: the "
        "distilled Fast as the first stage, the paper's full system).",
        "The slow row ranks the first caption of each test item only (Q x N decoder passes); r1_same_queries gives "
        "the other rows' R@1 on exactly those queries.",
        f"Fast{' (images)' if two_fasts else ''}: {describe_fast(spec.fast)}; batches with "
        f"{spec.fast_train.neighbours} nearest neighbours per anchor."
        + (f" Videos' Fast: {describe_fast(spec.fast_video)}." if two_fasts else ""),
        f"Slow: caption likelihood read in both directions ({spec.slow.directions}), decoder {spec.slow.layers}x"
        f"{spec.slow.dim}, fine-grained map {'on' if spec.slow.fine_grained else 'off'}, vision {spec.slow.vision.kind}.",
        f"Soft targets: Fast's batches and schedule plus the soft-target term (weight {spec.distill.weight}, "
        f"temperature {spec.distill.temperature}) over each caption's batch items among its item's "
        f"{spec.fast_train.neighbour_pool} nearest neighbours, scored by Slow once before training: the "
        f"fast_distilled row of videos" + (", fast_soft_targets of images." if spec.uncaptioned else " and images."),
    ]
    if spec.uncaptioned:
        notes.append(
            f"fast_distilled (images): Fast's schedule over the captioned train images plus {spec.uncaptioned} "
            f"uncaptioned ones, each captioned by Slow (the transfer set): Fast shortlists "
            f"{spec.teacher_captions.shortlist} of the training captions, the image keeps those within "
            f"{spec.teacher_captions.within} nat of Slow's best (at most {spec.teacher_captions.most}).")
    return rows, notes


def describe_fast(cfg: FastConfig) -> str:
    frozen = lambda t: "trained" if t.trainable else "frozen"  # noqa: E731
    layers = f", first {cfg.text.layers} layer(s)" if cfg.text.layers else ""
    return (f"vision {cfg.vision.kind} ({frozen(cfg.vision)}, {cfg.vision.image_size}px), text {cfg.text.kind} "
            f"({frozen(cfg.text)}{layers}), {cfg.vision_pooling} / {cfg.text_pooling} pooling, "
            f"{'MLP' if cfg.head_hidden else 'linear'} heads to {cfg.embed_dim}-d")


def plot_table(rows: list[dict], path: Path) -> None:
    """R@1 and ms per query against K for Fast then Slow, with Fast, distilled Fast and Slow as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    modalities = sorted({r["modality"] for r in rows})
    fig, axes = plt.subplots(2, len(modalities), figsize=(5 * len(modalities), 7), squeeze=False)
    for col, modality in enumerate(modalities):
        mine = [r for r in rows if r["modality"] == modality]
        ref = {r["method"]: r for r in mine if r["k"] is None}
        for ax, key, label in ((axes[0, col], "r1", "R@1 (%)"), (axes[1, col], "ms_per_query", "ms per query")):
            for method, style, name in (("fast+slow", "o-", "Fast then Slow (top K)"),
                                        ("fast_distilled+slow", "s--", "distilled Fast then Slow")):
                reranked = sorted((r for r in mine if r["method"] == method), key=lambda r: r["k"])
                ks = [r["k"] for r in reranked]
                if reranked:
                    ax.plot(ks, [r[key] for r in reranked], style, label=name)
            for method, style in (("slow", "r--"), ("fast", "k:"), ("fast_distilled", "g-."),
                                  ("fast_soft_targets", "b-.")):
                if method in ref and ref[method][key] is not None:
                    ax.axhline(ref[method][key], color=style[0], linestyle=style[1:], label=method)
            ax.set_xscale("log")
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("K (candidates re-ranked by Slow)")
            ax.set_ylabel(label)
            if key == "ms_per_query":
                ax.set_yscale("log")
            ax.set_title(f"{modality}: {label}")
            ax.grid(alpha=0.3)
        axes[0, col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
