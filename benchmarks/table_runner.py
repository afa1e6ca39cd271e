"""Runs the rows of the benchmark table; its sizes, models and schedules are benchmarks/table_spec.py's.

Per modality: train Fast; train Slow; evaluate Fast, Slow over the whole gallery,
Fast then Slow at several K, and Fast distilled from Slow. Distilled Fast has
Fast's schedule plus the soft-target term, its batches holding each anchor's
neighbours (the distill preset's count: the candidates the teacher scores, which
Fast's own batches may not hold); for images with a transfer
set (`TableSpec.uncaptioned`) it is instead Fast over the captioned images plus
uncaptioned ones captioned by Slow, and the soft-target student stays as the row
`fast_soft_targets`. Every row ranks the same queries (every caption of the
evaluated split: test for the table, val while choosing its settings) against the
same gallery (that split's items); then every method is timed alike
(benchmarks/table_timing.py), apart from the results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from benchmarks.fast_defaults import DEFAULT_FAST, VIDEO_FAST  # noqa: F401  (the table's Fasts, for benchmarks.gpu)
from benchmarks.model_cache import ModelCache, split_fingerprint
from benchmarks.table_report import table_notes
from benchmarks.table_spec import Models, TableSpec, model_depends, table_spec
from benchmarks.table_timing import Answer, add_timings, fast_answer, rerank_answer, slow_answer, timing_summary
from fastslow.data.loaded import LoadedSplit
from fastslow.data.source import DataConfig, load_data_split
from fastslow.eval import chance_metrics, metrics_from_ranks, ranks_of_true
from fastslow.eval.retrieval import rerank_embedded
from fastslow.inference.fast_embeddings import FastRetrieval, embed_split
from fastslow.inference.slow_scores import slow_features, slow_score_matrix
from fastslow.log import get_logger
from fastslow.models.fast import FastModel
from fastslow.models.slow import SlowModel
from fastslow.synth import ensure_synth
from fastslow.synth.generate import SynthConfig
from fastslow.synth.presets import synth_config
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


def row(modality: str, method: str, k, metrics: dict, queries: int, gallery: int) -> dict:
    """A row's results; its timings (`latency_ms`, `queries_per_s`) are added once every model is evaluated."""
    return {"modality": modality, "method": method, "k": k, "r1": round(metrics["r1"], 2),
            "r5": round(metrics["r5"], 2), "r10": round(metrics["r10"], 2), "median_rank": metrics["median_rank"], "queries": queries,
            "gallery": gallery}


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
    evaluation: LoadedSplit  # the split the rows are on: test, or val while choosing the settings
    extra: LoadedSplit | None  # the uncaptioned images (the transfer set), or None
    cache: ModelCache
    batches: FastBatches | None = None
    train_features: torch.Tensor | None = None  # Slow's features of the training items, once Slow trained here

    @property
    def depends(self) -> dict[str, dict]:
        return model_depends(self.spec, self.modality)

    @cached_property
    def subset(self) -> np.ndarray:
        """The queries Slow ranks over the whole gallery: each item's first caption (captions come grouped by item)."""
        return np.searchsorted(self.evaluation.caption_pairs()[1], np.arange(len(self.evaluation.ids)))

    def fresh_batches(self, cfg: FastTrainConfig) -> FastBatches:
        """Batches of the training split under `cfg`, their neighbours from an untrained Fast (the visual tower's
        before training). Every model starts from the seed, so a model trained now equals the one a cache gives."""
        torch.manual_seed(self.seed)
        return FastBatches(FastModel(self.models.fast), self.train, cfg, self.progress)

    def fresh_fast(self, cfg: FastTrainConfig | None = None, batches: FastBatches | None = None,
                   **kwargs) -> FastModel:
        """Fast trained from the seed, on the run's batches and Fast schedule unless given others."""
        torch.manual_seed(self.seed)
        model = FastModel(self.models.fast)
        train_fast(model, self.train, cfg or self.fast_train, self.progress, batches=batches or self.batches, **kwargs)
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
        cfg = replace(self.spec.soft_target_schedule(self.modality), seed=self.seed)
        b = self.batches if cfg == self.fast_train else self.fresh_batches(cfg)
        table = precompute_teacher(slow, features, b.texts, b.caption_item, b.neighbour_table, progress=self.progress)
        return self.fresh_fast(cfg, b, loss_fn=DistillationLoss(table, self.spec.distill))


def prepare_run(spec: TableSpec, seed: int, root: Path, modality: str, split: str, progress: bool,
                models_dir: Path | None, retrain: bool) -> ModalityRun:
    """One modality's data (the training split and the evaluated `split`) and cache, and its Fast batches."""
    models = spec.models(modality)
    data = data_config(root, modality)
    size = models.fast.vision.image_size
    train = load_data_split(data, "train", size, progress)
    evaluation = load_data_split(data, split, size, progress)
    transfer = modality == "image" and spec.uncaptioned > 0
    extra = load_data_split(DataConfig(path=str(root / "images_uncaptioned"), num_frames=NUM_FRAMES), None, size,
                            progress) if transfer else None
    cache = ModelCache(models_dir, {"seed": seed, "modality": modality, "train": split_fingerprint(train)}, retrain)
    run = ModalityRun(spec, modality, seed, progress, models, replace(models.fast_train, seed=seed), train,
                      evaluation, extra, cache)
    run.batches = run.fresh_batches(run.fast_train)
    return run


def run_modality(spec: TableSpec, seed: int, root: Path, modality: str, split: str, progress: bool,
                 models_dir: Path | None = None, retrain: bool = False,
                 with_students: bool = True) -> tuple[list[dict], dict]:
    """Train the models on one modality (or reuse them from `models_dir`), evaluate them on `split`, time them;
    return its table rows and what the timings covered. `with_students=False` leaves out the distilled students."""
    run = prepare_run(spec, seed, root, modality, split, progress, models_dir, retrain)
    fast_model, fast_seconds = run.cache.model("fast", run.fresh_fast, run.depends["fast"])
    n = len(run.evaluation.ids)
    fast = evaluated(run, "fast", fast_model)
    rows = [row(modality, "chance", None, chance_metrics(n), len(fast.emb.texts), n), fast.row]
    log.info("%s fast: R@1 %.1f on %s (%s)", modality, fast.row["r1"], split, trained(fast_seconds))
    slow = slow_over_gallery(run, fast)
    rows.append(slow.row)
    answers = [(fast.row, fast_answer(fast.model, fast.emb.gallery)),
               (slow.row, slow_answer(slow.model, slow.features))]
    reranked = rerank_rows(run, "fast+slow", fast, slow)
    students = distilled(run, fast_model, slow.model) if with_students else []
    if students:
        # The paper's full system: the distilled Fast (the last student) retrieves, Slow re-ranks.
        reranked += rerank_rows(run, "fast_distilled+slow", students[-1], slow)
    first_ks, system_ks = [r for r, _ in reranked[: len(spec.ks)]], [r for r, _ in reranked[len(spec.ks) :]]
    rows += first_ks + [s.row for s in students] + system_ks
    answers += [(s.row, fast_answer(s.model, s.emb.gallery)) for s in students] + reranked
    # Every method is timed on Slow's queries (one caption per item), the same sample and batches for each.
    log.info("%s: timing %d methods", modality, len(answers))
    add_timings(answers, slow.texts, spec.timing, slow.row)
    return rows, timing_summary(spec.timing, slow.texts, str(fast_model.device))


@dataclass
class Evaluated:
    """A Fast model's row on the evaluation split, its embeddings and the rank of each query's true item."""

    row: dict
    model: FastModel
    emb: FastRetrieval
    ranks: np.ndarray


@dataclass
class SlowStage:
    """Slow, its visual features of the gallery, the queries it ranks over the whole gallery, and its row."""

    model: SlowModel
    features: torch.Tensor
    texts: list[str]
    row: dict


def slow_over_gallery(run: ModalityRun, fast: Evaluated) -> SlowStage:
    """Slow (trained or kept) over the whole gallery: Q x N decoder passes, so it ranks one caption per item (the
    first); the other rows report their metrics on those same queries too (`same_queries`)."""
    slow, slow_seconds = run.cache.model("slow", run.fresh_slow, run.depends["slow"])
    features = slow_features(slow, run.evaluation.pixels)
    n, subset = len(run.evaluation.ids), run.subset
    texts, true = [fast.emb.texts[i] for i in subset], fast.emb.true_index[subset]
    scores = slow_score_matrix(slow, features, texts, torch.arange(n).expand(len(subset), n), progress=run.progress)
    metrics = metrics_from_ranks(ranks_of_true(scores, true))
    log.info("%s slow: R@1 %.1f (%s)", run.modality, metrics["r1"], trained(slow_seconds))
    return SlowStage(slow, features, texts, row(run.modality, "slow", None, metrics, len(subset), n))


def distilled(run: ModalityRun, fast: FastModel, slow) -> list[Evaluated]:
    """The students, evaluated: the soft-target one, then (images with a transfer set) the one trained on Slow's
    captions of the uncaptioned items. The last is the distilled Fast, the first stage of the full system."""
    modality, transfer = run.modality, run.extra is not None
    soft_model, soft_seconds = run.cache.model("fast_soft_targets", lambda: run.soft_target_student(slow),
                                               run.depends["fast_soft_targets"])
    # With a transfer set the soft-target student is the ablation row; without one it is the distilled Fast.
    soft = evaluated(run, "fast_soft_targets" if transfer else "fast_distilled", soft_model)
    log.info("%s fast, soft targets: R@1 %.1f (%s)", modality, soft.row["r1"], trained(soft_seconds))
    if not transfer:
        return [soft]
    model, seconds = run.cache.model(
        "fast_teacher_captions", lambda: train_on_teacher_captions(run, fast, slow),
        # The uncaptioned images' file names follow the test split's, whose size differs between quick
        # and full; their training ids do not.
        {**run.depends["fast_teacher_captions"], "uncaptioned": split_fingerprint(run.extra, ids=False)})
    student = evaluated(run, "fast_distilled", model)
    student.row.update(captioned_items=len(run.train.ids), teacher_captioned_items=len(run.extra.ids))
    log.info("%s fast distilled (teacher captions): R@1 %.1f (%s)", modality, student.row["r1"], trained(seconds))
    return [soft, student]


def trained(seconds: float | None) -> str:
    return "reused" if seconds is None else f"trained in {seconds:.0f} s"


def evaluated(run: ModalityRun, method: str, model: FastModel) -> Evaluated:
    """A Fast model's row on the evaluation split (with its metrics on Slow's queries), embeddings and ranks."""
    emb = embed_split(model, run.evaluation, progress=run.progress)
    ranks = ranks_of_true(emb.queries.double() @ emb.gallery.double().T, emb.true_index)
    out = row(run.modality, method, None, metrics_from_ranks(ranks), len(emb.texts), len(run.evaluation.ids))
    out["same_queries"] = same_queries(ranks, run.subset)
    return Evaluated(out, model, emb, ranks)


def same_queries(ranks: np.ndarray, subset: np.ndarray) -> dict:
    """Metrics on Slow's queries only (`subset`): like for like with Slow over the whole gallery."""
    return {key: round(value, 2) for key, value in metrics_from_ranks(ranks[subset]).items() if key != "mean_rank"}


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


def rerank_rows(run: ModalityRun, method: str, first: Evaluated, slow: SlowStage) -> list[tuple[dict, Answer]]:
    """One row per K: the first stage's top K of every query re-ranked by Slow; each with how a query is answered."""
    out, n, emb = [], len(run.evaluation.ids), first.emb
    for k in run.spec.ks:
        ranks, _ = rerank_embedded(emb, first.ranks, slow.model, slow.features, k)
        reranked = row(run.modality, method, k, metrics_from_ranks(ranks), len(emb.texts), n)
        reranked["same_queries"] = same_queries(ranks, run.subset)
        out.append((reranked, rerank_answer(first.model, emb.gallery, slow.model, slow.features, k)))
    return out


def table_data(spec: TableSpec, size: str, seed: int, root: Path, progress: bool = True) -> SynthConfig:
    """The synthetic benchmark of a size with the table's transfer set, written under `root` unless already there
    (one dataset for every benchmark that reads it); its settings."""
    overrides = [f"n_uncaptioned={spec.uncaptioned}"]
    ensure_synth(root, seed=seed, size=size, progress=progress, overrides=overrides)
    return synth_config(size, seed, overrides)


def run_table(size: str, seed: int, root: Path, modalities: list[str], progress: bool = True,
              models_dir: Path | None = None, retrain: bool = False, split: str = "test",
              overrides: list[str] = (), with_students: bool = True) -> tuple[list[dict], list[str], dict]:
    """All rows of the table for the given size on `split`, the notes printed under it, and what each modality's
    timings covered. Trained models are kept in (and reused from) `models_dir` unless it is None; `retrain`
    trains them all again; `overrides` change the size's settings (`table_spec`); `with_students=False` leaves out
    the distilled students (a tuning run of a Fast or Slow setting)."""
    spec = table_spec(size, overrides=overrides)
    table_data(spec, size, seed, root, progress)
    rows, timing = [], {}
    for modality in modalities:
        modality_rows, timing[modality] = run_modality(spec, seed, root, modality, split, progress, models_dir,
                                                       retrain, with_students)
        rows += modality_rows
    return rows, table_notes(spec, split), timing
