"""What the `fastslow train` and `fastslow eval` commands do, on any supported dataset."""

from __future__ import annotations

import json
import time

from fastslow import storage
from fastslow.config import DataConfig, FastRunConfig, dump_config
from fastslow.data.decode import DecodeConfig
from fastslow.data.loaded import LoadedSplit, load_split
from fastslow.data.registry import open_dataset
from fastslow.errors import FastslowError
from fastslow.eval import RetrievalResult, chance_metrics
from fastslow.log import get_logger
from fastslow.models.checkpoint import load_checkpoint, save_checkpoint
from fastslow.models.fast import FastModel
from fastslow.training import evaluate_fast, train_fast

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


def run_train_fast(cfg: FastRunConfig, progress: bool = True) -> dict:
    """Train Fast on the training split, evaluate on the validation split, save the checkpoint to `cfg.out`."""
    started = time.time()
    size = cfg.model.vision.image_size
    train = load_data_split(cfg.data, cfg.data.train_split, size, progress)
    write_report(train.report, storage.join(cfg.out, "skipped_train.jsonl"))
    model = FastModel(cfg.model)
    history = train_fast(model, train, cfg.train, progress=progress)
    summary = {"train_items": len(train.ids), "steps": len(history), "final_loss": history[-1]["loss"] if history else None}
    if cfg.data.val_split:
        val = load_data_split(cfg.data, cfg.data.val_split, size, progress)
        summary["val"] = result_summary(evaluate_fast(model, val), cfg.data.val_split)
    checkpoint = storage.join(cfg.out, "checkpoint")
    save_checkpoint(model, checkpoint, extra={"train_summary": summary})
    storage.write_text(storage.join(cfg.out, "config.yaml"), dump_config(cfg))
    storage.write_text(storage.join(cfg.out, "history.json"), json.dumps(history))
    summary.update(checkpoint=checkpoint, seconds=round(time.time() - started, 1))
    return summary


def run_eval(checkpoint: str, data: DataConfig, split: str | None, progress: bool = True) -> dict:
    """Evaluate a saved Fast checkpoint on one split of any supported dataset."""
    model, _ = load_checkpoint(checkpoint)
    loaded = load_data_split(data, split, model.config.vision.image_size, progress)
    return result_summary(evaluate_fast(model, loaded, progress=progress), split)
