"""One training run in this process: check the settings, load, prepare, fit, save the same artifacts as the Ray
job (fastslow/train/artifacts.py). `prepare_training` is also what every Ray Train worker runs on its shard."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from fastslow.data.decode import decode_fit, decode_geometry
from fastslow.devices import best_device
from fastslow.data.source import DataConfig
from fastslow.data.holdout import val_split_to_read
from fastslow.data.loaded import LoadedSplit
from fastslow.data.source import load_data_split
from fastslow.errors import FastslowError
from fastslow.eval.retrieval import result_summary
from fastslow.models.checkpoint import load_model
from fastslow.train.distillation import DistillationLoss, precompute_teacher
from fastslow.log import get_logger
from fastslow.train.loop import fit
from fastslow.train.artifacts import save_model, write_skipped, write_summary
from fastslow.models.fast import FastEncoder, FastModel
from fastslow.models.slow import SlowModel
from fastslow.train.slow_training import SlowBatches, init_slow_model, make_slow_model, slow_loss
from fastslow.eval.retrieval import evaluate_slow
from fastslow.inference.slow_scores import load_slow, slow_features
from fastslow.train.teacher_captions import add_teacher_captioned
from fastslow.train.fast_training import FastBatches, fast_loss, init_fast_model
from fastslow.eval.retrieval import evaluate_fast

log = get_logger(__name__)


def check_run(kind: str, cfg) -> SlowModel | None:
    """Refuse a run's settings before any data is read; the teacher of a distillation run (None otherwise).

    Both the one-process run and the Ray job call this first."""
    if kind not in ("fast", "slow", "distill"):
        raise FastslowError(f"unknown training kind {kind!r} (expected fast, slow or distill)")
    if not cfg.data.path:
        raise FastslowError("data.path is not set: pass --data PATH (a dataset file, folder or s3:// prefix)")
    return distill_teacher(cfg) if kind == "distill" else None


@dataclass
class Training:
    """A model ready to train: the model, its batch source and its loss."""

    model: torch.nn.Module
    batches: object
    loss_fn: object
    name: str

    def fit(self, cfg, progress: bool = True, **loop) -> list[dict]:
        """Run the optimisation (`loop`: resume / steps_per_epoch / on_step, see fastslow.train.loop.fit)."""
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
    return load_slow(cfg.teacher)


def prepare_training(kind: str, cfg, split: LoadedSplit, progress: bool = True, teacher: SlowModel | None = None,
                     teacher_pixels: np.ndarray | None = None, init: torch.nn.Module | None = None,
                     device: torch.device | str = "cpu") -> Training:
    """Model, batches and loss of a `fast`, `slow` or `distill` run on `split`: what both the one-process
    run and each Ray Train worker (on its shard) train. The Slow vocabulary comes from `split` unless the
    config names one (workers must share it). `teacher_pixels`: the split at the teacher's image size.
    The model's initial weights come from `cfg.train.seed`, so a run repeats exactly; a `slow` run with `init`
    (`init_slow_model`) fine-tunes that model instead. The model (and the teacher) move to `device` before the
    batches cache frozen towers' features and the teacher scores its table, so that work runs there too."""
    torch.manual_seed(cfg.train.seed)
    if kind == "fast":
        model = (init if init is not None else FastModel(cfg.model)).to(device)
        return Training(model, FastBatches(model, split, cfg.train, progress), fast_loss, "fast")
    if kind == "slow":
        model = (init if init is not None else make_slow_model(cfg.model, split.caption_pairs()[0])).to(device)
        return Training(model, SlowBatches(model, split, cfg.train, progress), slow_loss, "slow")
    if kind != "distill":
        raise FastslowError(f"unknown training kind {kind!r} (expected fast, slow or distill)")
    teacher = (teacher or distill_teacher(cfg)).to(device)
    if teacher_pixels is None and teacher.config.vision.image_size != cfg.model.vision.image_size:
        raise FastslowError(f"teacher {cfg.teacher}: its image size {teacher.config.vision.image_size} differs from "
                            f"the student's {cfg.model.vision.image_size}; train them at the same size")
    model = FastModel(cfg.model).to(device)
    batches = FastBatches(model, split, cfg.train, progress)
    features = slow_features(teacher, split.pixels if teacher_pixels is None else teacher_pixels, progress=progress)
    table = precompute_teacher(teacher, features, batches.texts, batches.caption_item, batches.neighbour_table,
                               progress=progress, item_offset=batches.item_offset)
    return Training(model, batches, DistillationLoss(table, cfg.distill), "fast (distilled)")


def run_training(kind: str, cfg, progress: bool = True) -> dict:
    """`fastslow train KIND`: train in this process, evaluate on the validation split, save the checkpoint to `cfg.out`."""
    started = time.time()
    device = best_device()  # a GPU where this process has one: the Ray job's workers are given theirs by Ray Train
    teacher = check_run(kind, cfg)  # a wrong setting or teacher fails before the data is read
    if teacher is not None:
        teacher.to(device)  # it scores the transfer set (if any) and the training pairs
    # A checkpoint to fine-tune (`init`): its config, so its image size and fit, replaces cfg.model.
    init = init_slow_model(cfg) if kind == "slow" else init_fast_model(cfg) if kind == "fast" else None
    size, fit = decode_geometry((init.config if init is not None else cfg.model).vision)
    train = load_data_split(cfg.data, cfg.data.train_split, size, progress, fit)
    write_skipped(cfg, train.report)
    teacher_pixels = None
    if teacher is not None and decode_geometry(teacher.config.vision) != decode_geometry(cfg.model.vision):
        # The teacher sees the items as its own processor makes them: its size, its fit (BLIP: squashed).
        teacher_size, teacher_fit = decode_geometry(teacher.config.vision)
        teacher_pixels = load_data_split(cfg.data, cfg.data.train_split, teacher_size, progress, teacher_fit).pixels
    summary = {"kind": kind, "train_items": len(train.ids), "skipped": len(train.report.problems),
               **({"teacher": cfg.teacher} if kind == "distill" else {})}
    if kind == "distill" and cfg.transfer.items:
        train, teacher_pixels, summary["transfer"] = add_transfer_set(cfg, train, teacher, teacher_pixels, progress)
    run = prepare_training(kind, cfg, train, progress, teacher, teacher_pixels, init, device)
    history = run.fit(cfg.train, progress)
    summary.update(validate(kind, cfg, run.model, progress))
    summary.update(steps=len(history), final_loss=history[-1]["loss"] if history else None)
    summary["checkpoint"] = save_model(cfg, run.model, history, dict(summary))
    summary["seconds"] = round(time.time() - started, 1)
    return write_summary(cfg, summary)


def add_transfer_set(cfg, train: LoadedSplit, teacher: SlowModel, teacher_pixels: np.ndarray | None,
                     progress: bool = True) -> tuple[LoadedSplit, np.ndarray | None, dict]:
    """The training split plus `cfg.transfer.items` captioned by the teacher (from the shortlist of the Fast
    checkpoint `cfg.transfer.fast`), the teacher's pixels to match, and a summary of the transfer set."""
    t = cfg.transfer  # checked by distill_teacher
    shortlister = load_model(t.fast, FastEncoder)
    size, teacher_size = cfg.model.vision.image_size, teacher.config.vision.image_size
    if shortlister.config.vision.image_size != size:
        raise FastslowError(f"transfer.fast {t.fast}: its image size {shortlister.config.vision.image_size} differs "
                            f"from the student's {size}; shortlist with a Fast model of the student's size")
    data = DataConfig(path=t.items, media=cfg.data.media, num_frames=cfg.data.num_frames)
    items = load_data_split(data, None, size, progress, decode_fit(cfg.model.vision))
    write_skipped(cfg, items.report, "skipped_transfer.jsonl")
    if not items.ids:
        raise FastslowError(f"transfer.items {t.items}: no readable items ({items.report.summary()})")
    if items.media != train.media:
        raise FastslowError(f"transfer.items {t.items}: holds {items.media}s, the training split {train.media}s")
    # The teacher sees the items at its own size, as it sees the training split (`teacher_pixels`).
    seen = items.pixels if teacher_pixels is None else load_data_split(data, None, teacher_size, progress,
                                                                       decode_fit(teacher.config.vision)).pixels
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
    split = val_split_to_read(cfg.data)  # None also where data.val_fraction=0 holds nothing out
    if not split:
        return {}
    val = load_data_split(cfg.data, split, model.config.vision.image_size, progress,  # the model's, if fine-tuned
                          decode_fit(model.config.vision))
    result = evaluate_slow(model, val, progress=progress) if kind == "slow" else evaluate_fast(model, val)
    return {"val": result_summary(result, split)}


