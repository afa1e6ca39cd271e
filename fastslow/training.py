"""One-process training and evaluation of the Fast dual encoder.

The step function works unchanged under a torch.distributed process group (the
Ray Train layer wraps the same code): the loss gathers negatives from every process.
Frozen towers are run once over the data and their features cached, so an epoch
only runs the trainable parts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from fastslow.data.loaded import LoadedSplit
from fastslow.eval import RetrievalResult, evaluate_embeddings
from fastslow.log import get_logger
from fastslow.losses import infonce_loss

log = get_logger(__name__)


@dataclass
class FastTrainConfig:
    """Optimisation settings of the Fast model."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    seed: int = 0
    encode_batch_size: int = 64
    log_every: int = 50


@torch.no_grad()
def visual_features(model, pixels: np.ndarray, batch_size: int, progress: bool = False, desc: str = "visual") -> torch.Tensor:
    """Tower features of every item, in order (frozen or not, no gradient)."""
    out = []
    for start in tqdm(range(0, len(pixels), batch_size), desc=desc, disable=not progress, leave=False):
        out.append(model.visual_features(torch.from_numpy(pixels[start : start + batch_size])))
    return torch.cat(out)


@torch.no_grad()
def text_features(model, texts: list[str], batch_size: int, progress: bool = False, desc: str = "text") -> torch.Tensor:
    """Tower features of every text, in order (no gradient)."""
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, leave=False):
        out.append(model.text_features(texts[start : start + batch_size]))
    return torch.cat(out)


class FastBatches:
    """Batches of (visual input, text input) for the Fast model, from tower features when a tower is frozen.

    Each epoch visits every item once; each item comes with one of its captions,
    drawn at random, so an item never meets itself as a negative.
    """

    def __init__(self, model, split: LoadedSplit, cfg: FastTrainConfig, progress: bool = True):
        self.split, self.cfg = split, cfg
        self.texts, self.caption_item = split.caption_pairs()
        self.first_caption = np.searchsorted(self.caption_item, np.arange(len(split.ids)))
        self.num_captions = np.bincount(self.caption_item, minlength=len(split.ids))
        self.cached_visual = None if model.config.vision.trainable else visual_features(
            model, split.pixels, cfg.encode_batch_size, progress, desc="caching visual features")
        self.cached_text = None if model.config.text.trainable else text_features(
            model, self.texts, cfg.encode_batch_size * 4, progress, desc="caching text features")

    def steps_per_epoch(self) -> int:
        return max(1, len(self.split.ids) // self.cfg.batch_size)

    def epoch(self, rng: np.random.Generator):
        order = rng.permutation(len(self.split.ids))
        b = self.cfg.batch_size
        for start in range(0, self.steps_per_epoch() * b, b):
            items = order[start : start + b]
            captions = self.first_caption[items] + rng.integers(0, self.num_captions[items])
            visual = self.cached_visual[items] if self.cached_visual is not None else torch.from_numpy(self.split.pixels[items])
            text = self.cached_text[captions] if self.cached_text is not None else [self.texts[i] for i in captions]
            yield visual, text


def embed_batch(model, visual, text) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of a batch given as tower features (tensors) or raw inputs (pixels, strings)."""
    if visual.dtype == torch.uint8:
        visual = model.visual_features(visual)
    if isinstance(text, list):
        text = model.text_features(text)
    return model.embed_visual_features(visual), model.embed_text_features(text)


def fast_loss(model, visual, text) -> torch.Tensor:
    """The Fast model's contrastive loss on one batch (gathered across processes when distributed)."""
    v, t = embed_batch(model, visual, text)
    return infonce_loss(v, t, model.scale())


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_fast(model, train: LoadedSplit, cfg: FastTrainConfig, progress: bool = True, loss_fn=fast_loss) -> list[dict]:
    """Train the Fast model in this process; returns the per-step history (loss, temperature, samples/s)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    batches = FastBatches(model, train, cfg, progress)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * batches.steps_per_epoch()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, cfg.warmup_steps))
    model.train()
    history, step = [], 0
    bar = tqdm(total=total, desc="training fast", disable=not progress)
    for epoch in range(cfg.epochs):
        for visual, text in batches.epoch(rng):
            t0 = time.perf_counter()
            loss = loss_fn(model, visual, text)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            record = {
                "step": step,
                "epoch": epoch,
                "loss": loss.item(),
                "temperature": model.temperature,
                "samples_per_s": len(visual) / (time.perf_counter() - t0),
            }
            history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", temp=f"{record['temperature']:.3f}")
    bar.close()
    model.eval()
    return history


@torch.no_grad()
def evaluate_fast(model, split: LoadedSplit, batch_size: int = 64, progress: bool = False) -> RetrievalResult:
    """Text-to-visual retrieval of the Fast model over a split (gallery embedded once, offline).

    The time per query counts what a query costs at serving time: encoding the
    text and scoring the gallery.
    """
    model.eval()
    texts, true_index = split.caption_pairs()
    gallery = torch.cat([
        model.embed_visual_features(f)
        for f in visual_features(model, split.pixels, batch_size, progress, desc="embedding gallery").split(batch_size)
    ])
    t0 = time.perf_counter()
    queries = model.encode_text(texts) if len(texts) <= batch_size else torch.cat(
        [model.encode_text(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])
    encode_ms = 1000.0 * (time.perf_counter() - t0) / len(texts)
    result = evaluate_embeddings(queries, gallery, true_index)
    result.ms_per_query += encode_ms
    return result
