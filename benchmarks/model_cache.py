"""Trained models of the benchmark table kept between runs, reused when what trained them is the same.

A model's key covers the seed, the modality, the bytes of the training data (ids, captions, pixels) and
the configs that model depends on (`depends`: Slow's key does not hold Fast's config, so a change to Fast
retrains Fast and its students but keeps Slow). The quick and full sizes share their training splits, so
they share their models, and any change to a model's configs or data trains it anew.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from fastslow.data.loaded import LoadedSplit
from fastslow.log import get_logger
from fastslow.models.checkpoint import load_checkpoint, save_checkpoint

log = get_logger(__name__)

# Part of every key: raised when the training code changes what a config and its data train (2: seeded initial
# weights, duplicate captions out of the negatives, the clamped logit scale, per-token teacher captions).
TRAINING_CODE = 2


def split_fingerprint(split: LoadedSplit, ids: bool = True) -> str:
    """sha256 of a split's ids (unless `ids` is False: names that training never sees), captions and pixels."""
    h = hashlib.sha256(json.dumps([split.ids if ids else None, split.captions]).encode())
    h.update(split.pixels.tobytes())
    return h.hexdigest()


class ModelCache:
    """Checkpoints under `root/<key>-<name>`; `root=None` keeps nothing, `retrain=True` overwrites."""

    def __init__(self, root: Path | None, key_parts: dict, retrain: bool = False):
        self.root, self.retrain, self.key_parts = root, retrain, key_parts

    def key(self, name: str, depends: dict) -> str:
        """The model's key: the cache's shared parts, its name and the configs (reprs) it depends on."""
        parts = {**self.key_parts, "training_code": TRAINING_CODE, "model": name, "depends": depends}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:16]

    def model(self, name: str, train: Callable[[], torch.nn.Module],
              depends: dict) -> tuple[torch.nn.Module, float | None]:
        """The cached model `name`, or `train()`'s (then saved); and the seconds training took (None: reused)."""
        path = None if self.root is None else self.root / f"{self.key(name, depends)}-{name}"
        if path is not None and not self.retrain and (path / "config.json").exists():
            model, manifest = load_checkpoint(str(path))
            log.info("reusing %s from %s (trained in %s s)", name, path, manifest["extra"].get("train_seconds"))
            return model, None
        started = time.perf_counter()
        model = train()
        seconds = round(time.perf_counter() - started, 1)
        if path is not None:
            # Written beside and renamed into place: an interrupted save never looks like a checkpoint.
            partial = path.with_name(path.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            save_checkpoint(model, str(partial), extra={"train_seconds": seconds})
            shutil.rmtree(path, ignore_errors=True)
            os.replace(partial, path)
        return model, seconds
