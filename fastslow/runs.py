"""What the `fastslow train` and `fastslow eval` commands do, on any supported dataset."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from fastslow import storage
from fastslow.config import DataConfig, dump_config
from fastslow.data.decode import DecodeConfig
from fastslow.data.loaded import LoadedSplit, load_split
from fastslow.data.registry import open_dataset
from fastslow.errors import FastslowError
from fastslow.distill import DistillationLoss, precompute_teacher
from fastslow.eval import RetrievalResult, chance_metrics, metrics_from_ranks, ranks_of_true
from fastslow.log import get_logger
from fastslow.loop import fit
from fastslow.models.checkpoint import load_checkpoint, save_checkpoint
from fastslow.models.fast import FastModel
from fastslow.models.slow import SlowModel
from fastslow.rerank import fast_topk, fuse_scores, reranked_ranks
from fastslow.slow_training import (SlowBatches, evaluate_slow, make_slow_model, slow_features, slow_loss,
                                    slow_score_matrix)
from fastslow.teacher_captions import add_teacher_captioned
from fastslow.training import FastBatches, FastRetrieval, embed_split, evaluate_fast, fast_loss

log = get_logger(__name__)


def load_data_split(data: DataConfig, split: str | None, image_size: int, progress: bool = True) -> LoadedSplit:
    """Read and decode one split of the configured dataset, logging what was skipped."""
    if not data.path:
        raise FastslowError("data.path is not set: pass --data PATH (a dataset file, folder or s3:// prefix)")
    reader = open_dataset(data.path, format=data.format, media_root=data.media_root)
    loaded = load_split(reader, split, DecodeConfig(image_size=image_size, num_frames=data.num_frames),
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


def write_report(report, uri: str) -> None:
    """Write the skipped items of a read as JSON lines (nothing lost silently)."""
    storage.write_text(uri, report.to_jsonl())


def result_summary(result: RetrievalResult, split: str | None) -> dict:
    """Metrics of one evaluation with chance beside them, as a JSON-friendly dict."""
    return {
        "split": split,
        **{k: round(v, 3) for k, v in result.metrics.items()},
        "ms_per_query": round(result.ms_per_query, 4),
        "queries": result.num_queries,
        "gallery": result.gallery_size,
        "chance": chance_metrics(result.gallery_size),
    }


def _load_train(cfg, size: int, progress: bool) -> LoadedSplit:
    train = load_data_split(cfg.data, cfg.data.train_split, size, progress)
    write_report(train.report, storage.join(cfg.out, "skipped_train.jsonl"))
    return train


def _finish_run(cfg, model, history: list[dict], summary: dict, started: float) -> dict:
    """Save the checkpoint, config and history of a run under `cfg.out`; the summary gains the checkpoint path."""
    summary.update(steps=len(history), final_loss=history[-1]["loss"] if history else None)
    checkpoint = storage.join(cfg.out, "checkpoint")
    save_checkpoint(model, checkpoint, extra={"train_summary": summary})
    storage.write_text(storage.join(cfg.out, "config.yaml"), dump_config(cfg))
    storage.write_text(storage.join(cfg.out, "history.json"), json.dumps(history))
    summary.update(checkpoint=checkpoint, seconds=round(time.time() - started, 1))
    return summary


@dataclass
class Training:
    """A model ready to train: the model, its batch source and its loss."""

    model: torch.nn.Module
    batches: object
    loss_fn: object
    name: str

    def fit(self, cfg, progress: bool = True, **loop) -> list[dict]:
        """Run the optimisation (`loop`: resume / steps_per_epoch / on_step, see fastslow.loop.fit)."""
        return fit(self.model, self.batches, cfg, self.loss_fn, progress, desc=f"training {self.name}", **loop)


def distill_teacher(cfg) -> SlowModel:
    """The Slow teacher of a distillation config, after checking the settings distillation needs."""
    if not cfg.teacher:
        raise FastslowError("teacher is not set: pass teacher=PATH, the Slow checkpoint to distil")
    if cfg.train.neighbours < 1:
        raise FastslowError(f"train.neighbours={cfg.train.neighbours}: distillation needs neighbour batches "
                            "(>= 1), or no batch holds a caption's teacher-scored candidates")
    if cfg.transfer.items and not cfg.transfer.fast:
        raise FastslowError("transfer.items is set but transfer.fast is not: pass transfer.fast=PATH, the Fast "
                            "checkpoint that shortlists each uncaptioned item's captions")
    cfg.transfer.validate()
    return load_model(cfg.teacher, SlowModel)


def prepare_training(kind: str, cfg, split: LoadedSplit, progress: bool = True, teacher: SlowModel | None = None,
                     teacher_pixels: np.ndarray | None = None) -> Training:
    """Model, batches and loss of a `fast`, `slow` or `distill` run on `split`: what both the one-process
    run and each Ray Train worker (on its shard) train. The Slow vocabulary comes from `split` unless the
    config names one (workers must share it). `teacher_pixels`: the split at the teacher's image size."""
    if kind == "fast":
        model = FastModel(cfg.model)
        return Training(model, FastBatches(model, split, cfg.train, progress), fast_loss, "fast")
    if kind == "slow":
        model = make_slow_model(cfg.model, split.caption_pairs()[0])
        return Training(model, SlowBatches(model, split, cfg.train, progress), slow_loss, "slow")
    if kind != "distill":
        raise FastslowError(f"unknown training kind {kind!r} (expected fast, slow or distill)")
    teacher = teacher or distill_teacher(cfg)
    if teacher_pixels is None and teacher.config.vision.image_size != cfg.model.vision.image_size:
        raise FastslowError(f"teacher {cfg.teacher}: its image size {teacher.config.vision.image_size} differs from "
                            f"the student's {cfg.model.vision.image_size}; train them at the same size")
    model = FastModel(cfg.model)
    batches = FastBatches(model, split, cfg.train, progress)
    features = slow_features(teacher, split.pixels if teacher_pixels is None else teacher_pixels, progress=progress)
    table = precompute_teacher(teacher, features, batches.texts, batches.caption_item, batches.neighbour_table,
                               progress=progress)
    return Training(model, batches, DistillationLoss(table, cfg.distill), "fast (distilled)")


def run_training(kind: str, cfg, progress: bool = True) -> dict:
    """`fastslow train KIND`: train in this process, evaluate on the validation split, save the checkpoint to `cfg.out`."""
    started = time.time()
    teacher = distill_teacher(cfg) if kind == "distill" else None  # a wrong teacher fails before the data is read
    train = _load_train(cfg, cfg.model.vision.image_size, progress)
    teacher_pixels = None
    if teacher is not None and teacher.config.vision.image_size != cfg.model.vision.image_size:
        teacher_pixels = load_data_split(cfg.data, cfg.data.train_split, teacher.config.vision.image_size,
                                         progress).pixels
    summary = {"train_items": len(train.ids), **({"teacher": cfg.teacher} if kind == "distill" else {})}
    if kind == "distill" and cfg.transfer.items:
        train, teacher_pixels, summary["transfer"] = add_transfer_set(cfg, train, teacher, teacher_pixels, progress)
    run = prepare_training(kind, cfg, train, progress, teacher, teacher_pixels)
    history = run.fit(cfg.train, progress)
    summary.update(validate(kind, cfg, run.model, progress))
    return _finish_run(cfg, run.model, history, summary, started)


def add_transfer_set(cfg, train: LoadedSplit, teacher: SlowModel, teacher_pixels: np.ndarray | None,
                     progress: bool = True) -> tuple[LoadedSplit, np.ndarray | None, dict]:
    """The training split plus `cfg.transfer.items` captioned by the teacher (from the shortlist of the Fast
    checkpoint `cfg.transfer.fast`), the teacher's pixels to match, and a summary of the transfer set."""
    t = cfg.transfer  # checked by distill_teacher
    shortlister = load_model(t.fast, FastModel)
    size, teacher_size = cfg.model.vision.image_size, teacher.config.vision.image_size
    if shortlister.config.vision.image_size != size:
        raise FastslowError(f"transfer.fast {t.fast}: its image size {shortlister.config.vision.image_size} differs "
                            f"from the student's {size}; shortlist with a Fast model of the student's size")
    data = DataConfig(path=t.items, media=cfg.data.media, num_frames=cfg.data.num_frames)
    items = load_data_split(data, None, size, progress)
    write_report(items.report, storage.join(cfg.out, "skipped_transfer.jsonl"))
    if not items.ids:
        raise FastslowError(f"transfer.items {t.items}: no readable items ({items.report.summary()})")
    if items.media != train.media:
        raise FastslowError(f"transfer.items {t.items}: holds {items.media}s, the training split {train.media}s")
    # The teacher sees the items at its own size, as it sees the training split (`teacher_pixels`).
    seen = items.pixels if teacher_pixels is None else load_data_split(data, None, teacher_size, progress).pixels
    both, captions = add_teacher_captioned(train, items.pixels, shortlister, teacher,
                                           slow_features(teacher, seen, progress=progress), t, progress=progress)
    if teacher_pixels is not None:
        teacher_pixels = np.concatenate([teacher_pixels, seen])
    per_item = round(sum(map(len, captions)) / len(captions), 2)
    log.info("transfer set: %d items captioned by the teacher (%.2f captions each)", len(items.ids), per_item)
    return both, teacher_pixels, {"items": len(items.ids), "skipped": len(items.report.problems),
                                  "captions_per_item": per_item}


def validate(kind: str, cfg, model, progress: bool = True) -> dict:
    """{"val": metrics} of a trained model on the validation split ({} without one); Slow ranks a capped gallery."""
    if not cfg.data.val_split:
        return {}
    val = load_data_split(cfg.data, cfg.data.val_split, cfg.model.vision.image_size, progress)
    result = evaluate_slow(model, val, progress=progress) if kind == "slow" else evaluate_fast(model, val)
    return {"val": result_summary(result, cfg.data.val_split)}


def load_model(checkpoint: str, expected: type):
    """A checkpoint's model, refusing any other model type than `expected` with a clear error."""
    model, _ = load_checkpoint(checkpoint)
    if not isinstance(model, expected):
        name = expected.__name__.removesuffix("Model")
        raise FastslowError(f"{checkpoint}: expected a {name} checkpoint, found a {type(model).__name__}")
    return model


def evaluate_reranked(fast: FastModel, slow: SlowModel, split: LoadedSplit, k: int, fast_weight: float = 0.0,
                      slow_pixels: np.ndarray | None = None, progress: bool = False) -> RetrievalResult:
    """Fast retrieves each caption's top k items of the split, Slow re-scores them; ms counts both per query."""
    emb = embed_split(fast, split, progress=progress)
    # Items' Slow features are computed offline, like the Fast gallery.
    features = slow_features(slow, split.pixels if slow_pixels is None else slow_pixels, progress=progress)
    fast_ranks = ranks_of_true(emb.queries.double() @ emb.gallery.double().T, emb.true_index)
    ranks, ms = rerank_embedded(emb, fast_ranks, slow, features, k, fast_weight, progress)
    return RetrievalResult(metrics=metrics_from_ranks(ranks), num_queries=len(emb.texts), gallery_size=len(split.ids),
                           ms_per_query=ms)


def rerank_embedded(emb: FastRetrieval, fast_ranks: np.ndarray, slow: SlowModel, features: torch.Tensor, k: int,
                    fast_weight: float = 0.0, progress: bool = False) -> tuple[np.ndarray, float]:
    """Ranks of the true items once Slow re-scores Fast's top k, and the ms per query (text encoding, top k, Slow)."""
    t0 = time.perf_counter()
    fast_scores, candidates = fast_topk(emb.queries, emb.gallery, k)
    slow_scores = slow_score_matrix(slow, features, emb.texts, torch.from_numpy(candidates), progress=progress)
    seconds = time.perf_counter() - t0
    ranks = reranked_ranks(fast_ranks, emb.true_index, candidates, fuse_scores(fast_scores, slow_scores, fast_weight))
    return ranks, emb.encode_ms_per_query + 1000.0 * seconds / len(emb.texts)


def run_eval(checkpoint: str, data: DataConfig, split: str | None, progress: bool = True, rerank: str | None = None,
             k: int = 20, fast_weight: float = 0.0) -> dict:
    """Evaluate a saved Fast checkpoint on one split; with `rerank` (a Slow checkpoint), Fast top k then Slow."""
    model = load_model(checkpoint, FastModel)
    loaded = load_data_split(data, split, model.config.vision.image_size, progress)
    if rerank is None:
        return result_summary(evaluate_fast(model, loaded, progress=progress), split)
    if k < 1:
        raise FastslowError(f"--k {k}: the number of candidates to re-rank must be at least 1")
    slow = load_model(rerank, SlowModel)
    slow_pixels = None
    if slow.config.vision.image_size != model.config.vision.image_size:
        slow_pixels = load_data_split(data, split, slow.config.vision.image_size, progress).pixels
    result = evaluate_reranked(model, slow, loaded, k, fast_weight, slow_pixels, progress)
    return {**result_summary(result, split), "rerank": rerank, "k": k, "fast_weight": fast_weight}
