"""Runs the rows of the benchmark table; its sizes, models and schedules are benchmarks/table_spec.py's.

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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.fast_defaults import DEFAULT_FAST, VIDEO_FAST  # noqa: F401  (the table's Fasts, for benchmarks.gpu)
from benchmarks.model_cache import ModelCache, split_fingerprint
from benchmarks.table_report import table_notes
from benchmarks.table_spec import Models, TableSpec, model_depends, table_spec
from fastslow.data.loaded import LoadedSplit
from fastslow.data.source import DataConfig, load_data_split
from fastslow.eval import chance_metrics, evaluate_embeddings, metrics_from_ranks, ranks_of_true
from fastslow.eval.retrieval import rerank_embedded
from fastslow.inference.fast_embeddings import embed_split
from fastslow.inference.slow_scores import slow_features, slow_score_matrix
from fastslow.log import get_logger
from fastslow.models.fast import FastModel
from fastslow.synth import ensure_synth
from fastslow.train.distillation import DistillationLoss, precompute_teacher
from fastslow.train.fast_training import FastBatches, FastTrainConfig, train_fast
from fastslow.train.slow_training import make_slow_model, train_slow
from fastslow.train.teacher_captions import add_teacher_captioned

log = get_logger(__name__)

NUM_FRAMES = 8


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


@dataclass
class ModalityRun:
    """One modality's models, data, kept-model cache and Fast batches: what every model of its rows trains on."""

    spec: TableSpec
    modality: str
    seed: int
    progress: bool
    models: Models
    fast_train: FastTrainConfig  # the modality's Fast schedule, with the run's seed
    train: LoadedSplit
    test: LoadedSplit
    extra: LoadedSplit | None  # the uncaptioned images (the transfer set), or None
    cache: ModelCache
    batches: FastBatches | None = None
    train_features: torch.Tensor | None = None  # Slow's features of the training items, once Slow trained here

    @property
    def depends(self) -> dict[str, dict]:
        return model_depends(self.spec, self.modality)

    def fresh_fast(self, **kwargs) -> FastModel:
        torch.manual_seed(self.seed)
        model = FastModel(self.models.fast)
        train_fast(model, self.train, self.fast_train, self.progress, batches=self.batches, **kwargs)
        return model

    def fresh_slow(self):
        torch.manual_seed(self.seed)
        model = make_slow_model(self.models.slow, self.batches.texts)
        self.train_features = slow_features(model, self.train.pixels, progress=self.progress)
        train_slow(model, self.train, replace(self.models.slow_train, seed=self.seed), self.progress,
                   features=self.train_features)
        return model

    def soft_target_student(self, slow) -> FastModel:
        """Fast plus the soft-target term, the teacher scoring each caption's batch candidates once."""
        # The teacher's features of the training items: the ones Slow trained on, or computed now.
        features = self.train_features if self.train_features is not None else slow_features(
            slow, self.train.pixels, progress=self.progress)
        b = self.batches
        table = precompute_teacher(slow, features, b.texts, b.caption_item, b.neighbour_table, progress=self.progress)
        return self.fresh_fast(loss_fn=DistillationLoss(table, self.spec.distill))


def prepare_run(spec: TableSpec, seed: int, root: Path, modality: str, progress: bool, models_dir: Path | None,
                retrain: bool) -> ModalityRun:
    """One modality's data and cache, and its Fast batches."""
    models = spec.models(modality)
    data = data_config(root, modality)
    size = models.fast.vision.image_size
    train = load_data_split(data, "train", size, progress)
    test = load_data_split(data, "test", size, progress)
    transfer = modality == "image" and spec.uncaptioned > 0
    extra = load_data_split(DataConfig(path=str(root / "images_uncaptioned"), num_frames=NUM_FRAMES), None, size,
                            progress) if transfer else None
    cache = ModelCache(models_dir, {"seed": seed, "modality": modality, "train": split_fingerprint(train)}, retrain)
    run = ModalityRun(spec, modality, seed, progress, models, replace(models.fast_train, seed=seed), train, test,
                      extra, cache)
    # Batches come from an untrained Fast (their neighbours are the visual tower's before training). Every
    # model starts from the seed, so a model trained now equals the one a cache would give.
    torch.manual_seed(seed)
    run.batches = FastBatches(FastModel(models.fast), train, run.fast_train, progress)
    return run


def run_modality(spec: TableSpec, seed: int, root: Path, modality: str, progress: bool,
                 models_dir: Path | None = None, retrain: bool = False) -> list[dict]:
    """Train the models on one modality (or reuse them from `models_dir`) and return its table rows."""
    run = prepare_run(spec, seed, root, modality, progress, models_dir, retrain)
    fast, fast_seconds = run.cache.model("fast", run.fresh_fast, run.depends["fast"])
    n = len(run.test.ids)
    fast_row, emb, fast_ranks = evaluated_row(modality, "fast", fast, run.test, None, progress)
    rows = [row(modality, "chance", None, chance_metrics(n), None, len(emb.texts), n), fast_row]
    log.info("%s fast: R@1 %.1f (%s)", modality, fast_row["r1"], trained(fast_seconds))

    slow, gallery_features, subset, slow_row = slow_over_gallery(run, emb, fast_ranks, fast_row)
    rows.append(slow_row)
    rows += rerank_rows(modality, "fast+slow", spec.ks, emb, fast_ranks, slow, gallery_features, subset, n)
    student_rows, student_emb, student_ranks = distilled_rows(run, fast, slow, subset)
    rows += student_rows
    # The paper's full system: the distilled Fast retrieves, Slow re-ranks.
    rows += rerank_rows(modality, "fast_distilled+slow", spec.ks, student_emb, student_ranks, slow, gallery_features,
                        subset, n)
    return rows


def slow_over_gallery(run: ModalityRun, emb, fast_ranks: np.ndarray, fast_row: dict):
    """Slow (trained or kept), its visual features of the gallery, the queries it ranks and its row.

    Slow over the whole gallery costs Q x N decoder passes: it ranks one caption per item (the first),
    and the other rows are reported on those same queries too (`*_same_queries` keys) for a like-for-like check."""
    slow, slow_seconds = run.cache.model("slow", run.fresh_slow, run.depends["slow"])
    gallery_features = slow_features(slow, run.test.pixels)
    n = len(run.test.ids)
    subset = np.searchsorted(emb.true_index, np.arange(n))
    sub_texts, sub_true = [emb.texts[i] for i in subset], emb.true_index[subset]
    everything = torch.arange(n).expand(len(subset), n)
    slow_all, slow_all_s = timed(slow_score_matrix, slow, gallery_features, sub_texts, everything,
                                 progress=run.progress)
    slow_metrics = metrics_from_ranks(ranks_of_true(slow_all, sub_true))
    fast_row["r1_same_queries"] = round(metrics_from_ranks(fast_ranks[subset])["r1"], 2)
    ms = 1000 * slow_all_s / len(subset)
    log.info("%s slow: R@1 %.1f (%s, %.1f ms/query over all)", run.modality, slow_metrics["r1"],
             trained(slow_seconds), ms)
    return slow, gallery_features, subset, row(run.modality, "slow", None, slow_metrics, ms, len(subset), n)


def distilled_rows(run: ModalityRun, fast: FastModel, slow, subset: np.ndarray):
    """The students' rows, and the distilled Fast's embeddings and ranks (the first stage of the full system)."""
    modality, test, progress = run.modality, run.test, run.progress
    transfer = run.extra is not None
    soft, soft_seconds = run.cache.model("fast_soft_targets", lambda: run.soft_target_student(slow),
                                         run.depends["fast_soft_targets"])
    # With a transfer set the soft-target student is the ablation row; without one it is the distilled Fast.
    soft_row, soft_emb, soft_ranks = evaluated_row(modality, "fast_soft_targets" if transfer else "fast_distilled",
                                                   soft, test, subset, progress)
    log.info("%s fast, soft targets: R@1 %.1f (%s)", modality, soft_row["r1"], trained(soft_seconds))
    if not transfer:
        return [soft_row], soft_emb, soft_ranks
    student, student_seconds = run.cache.model(
        "fast_teacher_captions", lambda: train_on_teacher_captions(run, fast, slow),
        # The uncaptioned images' file names follow the test split's, whose size differs between quick
        # and full; their training ids do not.
        {**run.depends["fast_teacher_captions"], "uncaptioned": split_fingerprint(run.extra, ids=False)})
    distilled_row, student_emb, student_ranks = evaluated_row(modality, "fast_distilled", student, test, subset,
                                                              progress)
    distilled_row.update(captioned_items=len(run.train.ids), teacher_captioned_items=len(run.extra.ids))
    log.info("%s fast distilled (teacher captions): R@1 %.1f (%s)", modality, distilled_row["r1"],
             trained(student_seconds))
    return [soft_row, distilled_row], student_emb, student_ranks


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


def train_on_teacher_captions(run: ModalityRun, fast: FastModel, slow) -> FastModel:
    """Fast trained on the captioned items plus the uncaptioned `run.extra` captioned by Slow (from Fast's shortlist)."""
    extra = run.extra
    (both, captions), caption_s = timed(add_teacher_captioned, run.train, extra.pixels, fast, slow,
                                        slow_features(slow, extra.pixels), run.spec.teacher_captions,
                                        prefix="uncaptioned/", progress=run.progress)
    log.info("%d uncaptioned images captioned by Slow in %.0f s (%.1f captions each)", len(extra.ids), caption_s,
             sum(map(len, captions)) / max(1, len(captions)))
    student = FastModel(run.models.fast)
    train_fast(student, both, run.fast_train, run.progress)
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
    spec = table_spec(size)
    ensure_synth(root, seed=seed, size=size, progress=progress, overrides=[f"n_uncaptioned={spec.uncaptioned}"])
    rows = []
    for modality in modalities:
        rows += run_modality(spec, seed, root, modality, progress, models_dir, retrain)
    return rows, table_notes(spec)
