"""Runs the rows of the benchmark table: one place that knows the sizes, models and schedules.

Per modality: train Fast; train Slow; evaluate Fast, Slow over the whole gallery,
Fast then Slow at several K, and Fast distilled from Slow (same batches and
schedule as Fast, plus the soft-target term). Every row ranks the same queries
(every caption of the test split) against the same gallery (the test items).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fastslow.config import DataConfig
from fastslow.distill import DistillationLoss, DistillConfig, precompute_teacher
from fastslow.eval import chance_metrics, evaluate_embeddings, metrics_from_ranks, ranks_of_true
from fastslow.log import get_logger
from fastslow.models.config import FastConfig, TextTowerConfig, VisionTowerConfig
from fastslow.models.fast import FastModel
from fastslow.models.slow import SlowConfig
from fastslow.runs import load_data_split, rerank_embedded
from fastslow.slow_training import SlowTrainConfig, make_slow_model, slow_features, slow_score_matrix, train_slow
from fastslow.synth import ensure_synth
from fastslow.teacher_captions import TeacherCaptionConfig, teacher_captions, with_extra_items
from fastslow.training import FastBatches, FastTrainConfig, embed_split, train_fast

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
    teacher_captions: TeacherCaptionConfig = field(default_factory=TeacherCaptionConfig)
    uncaptioned: int = 0  # training-distribution images without captions, for the fast_teacher_captions row


# The offline default: pretrained EfficientNet-Lite0 (frozen) with trained heads over the mid-level map's
# positions (global pooling finds the right scene group for only ~75% of captions in the top 20 on quick
# images, too few for re-ranking to catch up), and MiniLM's first layer fine-tuned. Quick images, Fast R@1 /
# R@10 / ms per caption encoded: all 6 layers frozen 47 / 91 / 1.9; 2 frozen 57 / 94 / 0.5; 2 fine-tuned
# 63 / 98 / 0.5; 1 fine-tuned 61 / 98 / 0.4. A query pays the text tower, so fewer layers also keep
# Fast's share of a Fast+Slow query small.
DEFAULT_FAST = FastConfig(vision=VisionTowerConfig(kind="efficientnet_lite0", image_size=128),
                          text=TextTowerConfig(kind="minilm", layers=1, trainable=True), embed_dim=256,
                          head_hidden=1024,
                          vision_pooling="mid_tokens", token_hidden=512, text_pooling="attention", visual_dropout=0.3)
# The Slow defaults are what the tuning runs found best on the quick data (2 cores); videos need more epochs.
DEFAULT_SLOW = SlowConfig()
SLOW_IMAGES = SlowTrainConfig(epochs=15)
SLOW_VIDEOS = SlowTrainConfig(epochs=25)
TINY_VISION = VisionTowerConfig(kind="tiny_cnn", image_size=32, trainable=True, width=16)
TINY_TEXT = TextTowerConfig(kind="tiny_transformer", trainable=True, width=32, depth=1, heads=2)
# Neighbour batches: +5 R@1 for Fast on quick images, and the distillation term needs them.
FAST_SCHEDULE = FastTrainConfig(epochs=60, batch_size=256, warmup_steps=50, lr=1e-3, neighbours=3)

SIZES = {
    "tiny": TableSpec(
        fast=FastConfig(vision=TINY_VISION, text=TINY_TEXT, embed_dim=32, head_hidden=0),
        fast_train=FastTrainConfig(epochs=2, batch_size=16, warmup_steps=2, neighbours=1),
        slow=SlowConfig(vision=TINY_VISION, text=TINY_TEXT, dim=32, layers=1, heads=2, ffn=64),
        slow_train=SlowTrainConfig(epochs=2, batch_size=16, warmup_steps=2),
        ks=(2, 5), uncaptioned=20),
    "quick": TableSpec(fast=DEFAULT_FAST, fast_train=FAST_SCHEDULE, slow=DEFAULT_SLOW, slow_train=SLOW_IMAGES,
                       slow_train_video=SLOW_VIDEOS),
    "full": TableSpec(fast=DEFAULT_FAST, fast_train=FAST_SCHEDULE, slow=DEFAULT_SLOW, slow_train=SLOW_IMAGES,
                      slow_train_video=SLOW_VIDEOS),
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


def run_modality(spec: TableSpec, seed: int, root: Path, modality: str, progress: bool) -> list[dict]:
    """Train the models on one modality and return its table rows."""
    data = data_config(root, modality)
    size = spec.fast.vision.image_size
    train = load_data_split(data, "train", size, progress)
    test = load_data_split(data, "test", size, progress)
    fast_train = replace(spec.fast_train, seed=seed)

    fast = FastModel(spec.fast)
    batches = FastBatches(fast, train, fast_train, progress)
    _, fast_seconds = timed(train_fast, fast, train, fast_train, progress, batches=batches)
    emb = embed_split(fast, test, progress=progress)
    q, n = len(emb.texts), len(test.ids)
    fast_result = evaluate_embeddings(emb.queries, emb.gallery, emb.true_index)
    fast_ms = fast_result.ms_per_query + emb.encode_ms_per_query
    chance = chance_metrics(n)
    rows = [row(modality, "chance", None, chance, None, q, n), row(modality, "fast", None, fast_result.metrics, fast_ms, q, n)]
    log.info("%s fast: R@1 %.1f (trained in %.0f s)", modality, fast_result.metrics["r1"], fast_seconds)

    torch.manual_seed(seed)
    slow = make_slow_model(spec.slow, batches.texts)
    train_features = slow_features(slow, train.pixels, progress=progress)
    slow_train = spec.slow_train_video if modality == "video" and spec.slow_train_video else spec.slow_train
    _, slow_seconds = timed(train_slow, slow, train, replace(slow_train, seed=seed), progress, features=train_features)
    gallery_features = slow_features(slow, test.pixels)
    # Slow over the whole gallery costs Q x N decoder passes: it ranks one caption per item (the first),
    # and the other rows are reported on those same queries too (`*_same_queries` keys) for a like-for-like check.
    subset = np.searchsorted(emb.true_index, np.arange(n))
    sub_texts, sub_true = [emb.texts[i] for i in subset], emb.true_index[subset]
    everything = torch.arange(n).expand(len(subset), n)
    slow_all, slow_all_s = timed(slow_score_matrix, slow, gallery_features, sub_texts, everything, progress=progress)
    slow_metrics = metrics_from_ranks(ranks_of_true(slow_all, sub_true))
    rows.append(row(modality, "slow", None, slow_metrics, 1000 * slow_all_s / len(subset), len(subset), n))
    fast_ranks = ranks_of_true(emb.queries.double() @ emb.gallery.double().T, emb.true_index)
    rows[1]["r1_same_queries"] = round(metrics_from_ranks(fast_ranks[subset])["r1"], 2)
    log.info("%s slow: R@1 %.1f (trained in %.0f s, %.1f ms/query over all)", modality, slow_metrics["r1"],
             slow_seconds, 1000 * slow_all_s / len(subset))

    rows += rerank_rows(modality, "fast+slow", spec.ks, emb, fast_ranks, slow, gallery_features, subset, n)

    table, teacher_s = timed(precompute_teacher, slow, train_features, batches.texts, batches.caption_item,
                             batches.neighbour_table, progress=progress)
    student = FastModel(spec.fast)
    _, distill_seconds = timed(train_fast, student, train, fast_train, progress,
                               loss_fn=DistillationLoss(table, spec.distill), batches=batches)
    student_emb = embed_split(student, test)
    distilled = evaluate_embeddings(student_emb.queries, student_emb.gallery, student_emb.true_index)
    rows.append(row(modality, "fast_distilled", None, distilled.metrics,
                    distilled.ms_per_query + student_emb.encode_ms_per_query, q, n))
    student_ranks = ranks_of_true(student_emb.queries.double() @ student_emb.gallery.double().T, student_emb.true_index)
    rows[-1]["r1_same_queries"] = round(metrics_from_ranks(student_ranks[subset])["r1"], 2)
    # The paper's full system: the distilled Fast retrieves, Slow re-ranks.
    rows += rerank_rows(modality, "fast_distilled+slow", spec.ks, student_emb, student_ranks, slow, gallery_features,
                        subset, n)
    log.info("%s fast distilled: R@1 %.1f (teacher table %.0f s, trained in %.0f s)", modality,
             distilled.metrics["r1"], teacher_s, distill_seconds)
    if modality == "image" and spec.uncaptioned:
        rows.append(teacher_captions_row(spec, train, test, fast, slow, fast_train, root / "images_uncaptioned",
                                         subset, progress))
    return rows


def teacher_captions_row(spec: TableSpec, train, test, fast, slow, fast_train: FastTrainConfig, uncaptioned: Path,
                         subset: np.ndarray, progress: bool) -> dict:
    """Fast trained on the captioned items plus uncaptioned ones captioned by Slow (from Fast's shortlist)."""
    extra = load_data_split(DataConfig(path=str(uncaptioned), num_frames=NUM_FRAMES), None,
                            spec.fast.vision.image_size, progress)
    pool = sorted({c for caps in train.captions for c in caps})
    captions, caption_s = timed(teacher_captions, fast, slow, slow_features(slow, extra.pixels), extra.pixels, pool,
                                spec.teacher_captions, progress=progress)
    both = with_extra_items(train, extra.pixels, captions, prefix="uncaptioned/")
    student = FastModel(spec.fast)
    _, seconds = timed(train_fast, student, both, fast_train, progress)
    emb = embed_split(student, test)
    result = evaluate_embeddings(emb.queries, emb.gallery, emb.true_index)
    out = row("image", "fast_teacher_captions", None, result.metrics, result.ms_per_query + emb.encode_ms_per_query,
              len(emb.texts), len(test.ids))
    ranks = ranks_of_true(emb.queries.double() @ emb.gallery.double().T, emb.true_index)
    out.update(r1_same_queries=round(metrics_from_ranks(ranks[subset])["r1"], 2), captioned_items=len(train.ids),
               teacher_captioned_items=len(extra.ids))
    log.info("image fast + teacher captions: R@1 %.1f (%d items captioned by Slow in %.0f s, trained in %.0f s)",
             result.metrics["r1"], len(extra.ids), caption_s, seconds)
    return out


def rerank_rows(modality: str, method: str, ks, emb, fast_ranks: np.ndarray, slow, gallery_features: torch.Tensor,
                subset: np.ndarray, n: int) -> list[dict]:
    """One row per K: the first stage's top K of every query re-ranked by Slow, timed per query."""
    rows, q = [], len(emb.texts)
    for k in ks:
        ranks, ms = rerank_embedded(emb, fast_ranks, slow, gallery_features, k)
        rows.append(row(modality, method, k, metrics_from_ranks(ranks), ms, q, n))
        rows[-1]["r1_same_queries"] = round(metrics_from_ranks(ranks[subset])["r1"], 2)
    return rows


def run_table(size: str, seed: int, root: Path, modalities: list[str], progress: bool = True) -> tuple[list[dict], list[str]]:
    """All rows of the table for the given size, and the notes printed under it."""
    spec = SIZES[size]
    ensure_synth(root, seed=seed, size=size, progress=progress, overrides=[f"n_uncaptioned={spec.uncaptioned}"])
    rows = []
    for modality in modalities:
        rows += run_modality(spec, seed, root, modality, progress)
    notes = [
        "Every caption of the test split is a query; the gallery is the test split's items, each scene with its "
        "swapped-attribute and swapped-relation twins (videos: time-reversed, colour- and direction-swapped twins).",
        "Ranks count ties against the query. ms_per_query on CPU: Fast = text encoding + scoring the gallery; "
        "Slow = its decoder over every (query, item) pair, with each item's visual features computed offline like "
        "Fast's gallery embeddings; fast+slow = Fast plus the decoder over the top K (fast_distilled+slow: the "
        "distilled Fast as the first stage, the paper's full system).",
        "The slow row ranks the first caption of each test item only (Q x N decoder passes); r1_same_queries gives "
        "the other rows' R@1 on exactly those queries.",
        f"Fast: {describe_fast(spec.fast)}; batches with {spec.fast_train.neighbours} nearest neighbours per anchor.",
        f"Slow: caption likelihood read in both directions ({spec.slow.directions}), decoder {spec.slow.layers}x"
        f"{spec.slow.dim}, fine-grained map {'on' if spec.slow.fine_grained else 'off'}, vision {spec.slow.vision.kind}.",
        f"fast_distilled: Fast's batches and schedule plus the soft-target term (weight {spec.distill.weight}, "
        f"temperature {spec.distill.temperature}) over each caption's batch items among its item's "
        f"{spec.fast_train.neighbour_pool} nearest neighbours, scored by Slow once before training.",
    ]
    if spec.uncaptioned:
        notes.append(
            f"fast_teacher_captions: Fast's schedule over the captioned train images plus {spec.uncaptioned} uncaptioned "
            f"ones, each captioned by Slow: Fast shortlists {spec.teacher_captions.shortlist} of the training captions, "
            f"the image keeps those within {spec.teacher_captions.within} nat of Slow's best (at most "
            f"{spec.teacher_captions.most}).")
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
                                  ("fast_teacher_captions", "b-.")):
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
