"""What every training run leaves under its `out` folder, in one process or on a Ray cluster alike:

    checkpoint/          the model (safetensors + config; the summary of its training inside)
    history.json         one record per optimizer step
    config.yaml          the run's whole config
    summary.json         what the command printed: items, steps, final loss, validation metrics, seconds
    skipped_train.jsonl  every training item that could not be read, with why
"""

from __future__ import annotations

import json

from fastslow import storage
from fastslow.config import dump_config
from fastslow.data.types import ReadReport
from fastslow.models.checkpoint import save_checkpoint

CHECKPOINT = "checkpoint"
HISTORY = "history.json"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
SKIPPED_TRAIN = "skipped_train.jsonl"


def write_skipped(cfg, report: ReadReport, name: str = SKIPPED_TRAIN) -> None:
    """The items a read skipped, as JSON lines beside the run's outputs (nothing lost silently)."""
    storage.write_text(storage.join(cfg.out, name), report.to_jsonl())


def save_model(cfg, model, history: list[dict], train_summary: dict) -> str:
    """The final checkpoint and the step history; returns the checkpoint's URI."""
    checkpoint = storage.join(cfg.out, CHECKPOINT)
    save_checkpoint(model, checkpoint, extra={"train_summary": train_summary})
    storage.write_text(storage.join(cfg.out, HISTORY), json.dumps(history))
    return checkpoint


def write_summary(cfg, summary: dict) -> dict:
    """The run's config and its summary, written last: a run folder with summary.json is a finished run."""
    storage.write_text(storage.join(cfg.out, CONFIG), dump_config(cfg))
    storage.write_text(storage.join(cfg.out, SUMMARY), json.dumps(summary, indent=2, default=str))
    return summary
