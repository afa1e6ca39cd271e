"""One-process training and evaluation of the Fast dual encoder.

The step function works unchanged under a torch.distributed process group (the
Ray Train layer wraps the same code): the loss gathers negatives from every process.
Frozen towers are run once over the data and their features cached, so an epoch
only runs the trainable parts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from fastslow.data.loaded import LoadedSplit
from fastslow.eval import RetrievalResult, evaluate_embeddings
from fastslow.log import get_logger
from fastslow.loop import fit
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
    # Hard-negative batches: each anchor brings this many of its nearest items (0: random batches).
    neighbours: int = 0
    neighbour_pool: int = 8


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


@dataclass
class Batch:
    """One training batch: which items and captions, and the model inputs for them."""

    items: np.ndarray  # indices into the split's items
    captions: np.ndarray  # indices into the split's caption list, one per item
    visual: torch.Tensor  # tower features (frozen tower) or uint8 pixels
    text: torch.Tensor | list[str]  # tower features (frozen tower) or the caption strings
    texts: list[str]  # the caption strings, always (a Slow teacher reads them)


class FastBatches:
    """Batches for the Fast model, from tower features when a tower is frozen.

    Each item comes with one of its captions, drawn at random, and appears at most
    once per batch, so it never meets itself as a negative. With `neighbours` > 0 a
    batch is built from anchors plus some of each anchor's nearest items (by the
    visual tower's features): the hard negatives a random batch rarely holds.
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
        self.neighbour_table = self._nearest(model, progress) if cfg.neighbours > 0 else None

    def _nearest(self, model, progress: bool) -> np.ndarray:
        """Each item's `neighbour_pool` nearest other items by cosine of the visual tower's pooled features."""
        feats = self.cached_visual
        if feats is None:
            feats = visual_features(model, self.split.pixels, self.cfg.encode_batch_size, progress, desc="neighbours")
        feats = torch.nn.functional.normalize((feats.mean(1) if feats.dim() == 3 else feats).float(), dim=1)
        pool = min(self.cfg.neighbour_pool, len(feats) - 1)
        table = []
        for chunk in feats.split(1024):
            sims = chunk @ feats.T
            table.append(sims.topk(pool + 1, dim=1).indices[:, 1:])  # the first is the item itself
        return torch.cat(table).numpy()

    def steps_per_epoch(self) -> int:
        return max(1, len(self.split.ids) // self.cfg.batch_size)

    def _batch_items(self, order: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        b = self.cfg.batch_size
        if self.neighbour_table is None:
            return order[step * b : (step + 1) * b]
        per_anchor = self.cfg.neighbours + 1
        anchors = order[step * (b // per_anchor) : (step + 1) * (b // per_anchor)]
        picked = [anchors]
        for _ in range(self.cfg.neighbours):
            picked.append(self.neighbour_table[anchors, rng.integers(0, self.neighbour_table.shape[1], len(anchors))])
        items = np.concatenate(picked)
        _, first = np.unique(items, return_index=True)
        return items[np.sort(first)][:b]

    def epoch(self, rng: np.random.Generator):
        order = rng.permutation(len(self.split.ids))
        for step in range(self.steps_per_epoch()):
            items = self._batch_items(order, step, rng)
            captions = self.first_caption[items] + rng.integers(0, self.num_captions[items])
            texts = [self.texts[i] for i in captions]
            visual = self.cached_visual[items] if self.cached_visual is not None else torch.from_numpy(self.split.pixels[items])
            text = self.cached_text[captions] if self.cached_text is not None else texts
            yield Batch(items=items, captions=captions, visual=visual, text=text, texts=texts)


def embed_batch(model, visual, text) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of a batch given as tower features (tensors) or raw inputs (pixels, strings)."""
    if visual.dtype == torch.uint8:
        visual = model.visual_features(visual)
    if isinstance(text, list):
        text = model.text_features(text)
    return model.embed_visual_features(visual), model.embed_text_features(text)


def fast_loss(model, batch: Batch) -> tuple[torch.Tensor, dict]:
    """The Fast model's contrastive loss on one batch (gathered across processes when distributed)."""
    v, t = embed_batch(model, batch.visual, batch.text)
    loss = infonce_loss(v, t, model.scale())
    return loss, {"loss": loss.item(), "temperature": model.temperature}


def train_fast(model, train: LoadedSplit, cfg: FastTrainConfig, progress: bool = True, loss_fn=fast_loss,
               batches: FastBatches | None = None, **loop) -> list[dict]:
    """Train the Fast model; returns the per-step history (loss, temperature, samples/s).

    `loss_fn(model, batch) -> (loss, metrics)`; the distillation loss plugs in here. `loop` passes
    resume / steps_per_epoch / on_step through to `fastslow.loop.fit` (the Ray Train job uses them).
    """
    batches = batches or FastBatches(model, train, cfg, progress)
    return fit(model, batches, cfg, loss_fn, progress, desc="training fast", **loop)


@dataclass
class FastRetrieval:
    """A split embedded by the Fast model: every caption a query, every item in the gallery."""

    queries: torch.Tensor  # (Q, E)
    gallery: torch.Tensor  # (N, E)
    true_index: np.ndarray  # (Q,) gallery index of each query's item
    texts: list[str]
    encode_ms_per_query: float  # text encoding, what each query pays at serving time


@torch.no_grad()
def embed_split(model, split: LoadedSplit, batch_size: int = 64, progress: bool = False) -> FastRetrieval:
    """Embed a split's gallery (offline) and its captions (timed: a query pays this)."""
    model.eval()
    texts, true_index = split.caption_pairs()
    feats = visual_features(model, split.pixels, batch_size, progress, desc="embedding gallery")
    gallery = torch.cat([model.embed_visual_features(f) for f in feats.split(batch_size)])
    t0 = time.perf_counter()
    queries = torch.cat([model.encode_text(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])
    encode_ms = 1000.0 * (time.perf_counter() - t0) / len(texts)
    return FastRetrieval(queries, gallery, true_index, texts, encode_ms)


def evaluate_fast(model, split: LoadedSplit, batch_size: int = 64, progress: bool = False) -> RetrievalResult:
    """Text-to-visual retrieval of the Fast model over a split.

    The time per query counts what a query costs at serving time: encoding the
    text and scoring the gallery.
    """
    embedded = embed_split(model, split, batch_size, progress)
    result = evaluate_embeddings(embedded.queries, embedded.gallery, embedded.true_index)
    result.ms_per_query += embedded.encode_ms_per_query
    return result
