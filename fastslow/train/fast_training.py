"""One-process training and evaluation of the Fast dual encoder.

The step function works unchanged under a torch.distributed process group (the
Ray Train layer wraps the same code): the loss gathers negatives from every process.
Frozen towers are run once over the data and their features cached, so an epoch
only runs the trainable parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastslow.data.loaded import LoadedSplit
from fastslow.inference.fast_embeddings import text_features, visual_features
from fastslow.log import get_logger
from fastslow.train.loop import fit
from fastslow.train.losses import global_offset, infonce_loss, string_keys

log = get_logger(__name__)


@dataclass
class FastTrainConfig:
    """Optimisation settings of the Fast model."""

    epochs: int = 10
    batch_size: int = 128  # the global batch: items per optimizer step, over all workers of a Ray job together
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    seed: int = 0
    encode_batch_size: int = 64
    # Hard-negative batches: each anchor brings this many of its nearest items (0: random batches).
    neighbours: int = 0
    neighbour_pool: int = 8


@dataclass
class Batch:
    """One training batch: which items and captions, and the model inputs for them."""

    items: np.ndarray  # indices into this process's split (a Ray Train worker's shard), numbered from 0
    captions: np.ndarray  # indices into the split's caption list, one per item
    visual: torch.Tensor  # tower features (frozen tower) or uint8 pixels
    text: torch.Tensor | list[str]  # tower features (frozen tower) or the caption strings
    texts: list[str]  # the caption strings, always (a Slow teacher reads them)
    # The global number of this split's item 0: `offset + items` number the items uniquely over every
    # worker's shard, so gathered items can be told apart (0 in one process).
    offset: int = 0
    text_keys: np.ndarray | None = None  # `string_keys` of the caption texts: equal texts are not negatives

    @property
    def global_items(self) -> np.ndarray:
        """The items' numbers over all processes' splits together."""
        return self.offset + np.asarray(self.items, dtype=np.int64)


class FastBatches:
    """Batches for the Fast model, from tower features when a tower is frozen.

    Each item comes with one of its captions, drawn at random, and appears at most
    once per batch, so it never meets itself as a negative. With `neighbours` > 0 a
    batch is built from anchors plus some of each anchor's nearest items (by the
    visual tower's features): the hard negatives a random batch rarely holds.

    Under a process group, construction is a collective (every process's split size, for `item_offset`).
    """

    def __init__(self, model, split: LoadedSplit, cfg: FastTrainConfig, progress: bool = True):
        self.split, self.cfg = split, cfg
        self.texts, self.caption_item = split.caption_pairs()
        self.first_caption = np.searchsorted(self.caption_item, np.arange(len(split.ids)))
        self.num_captions = np.bincount(self.caption_item, minlength=len(split.ids))
        self.text_keys = string_keys(self.texts)
        self.item_offset = global_offset(len(split.ids))  # this shard's place among all workers' shards
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
            yield self.batch(items, self.first_caption[items] + rng.integers(0, self.num_captions[items]))

    def batch(self, items: np.ndarray, captions: np.ndarray) -> Batch:
        """The batch of these items (indices into the split), each with the caption of the same position."""
        texts = [self.texts[i] for i in captions]
        visual = self.cached_visual[items] if self.cached_visual is not None else torch.from_numpy(self.split.pixels[items])
        text = self.cached_text[captions] if self.cached_text is not None else texts
        return Batch(items=items, captions=captions, visual=visual, text=text, texts=texts, offset=self.item_offset,
                     text_keys=self.text_keys[captions])


def init_fast_model(cfg):
    """The model a `fast` run fine-tunes: the pretrained checkpoint `cfg.init` with `cfg.trainable` applied, or None."""
    init = getattr(cfg, "init", "")
    if not init:
        return None
    from fastslow.errors import FastslowError
    from fastslow.models.checkpoint import load_model
    from fastslow.models.pretrained_fast import PretrainedFastModel

    model = load_model(init, PretrainedFastModel)
    model.set_trainable(cfg.trainable)
    if not any(p.requires_grad for p in model.parameters()):
        raise FastslowError(f"init {init}: trainable={cfg.trainable!r} leaves nothing to train")
    return model


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
    loss = infonce_loss(v, t, model.scale(), batch.text_keys)
    return loss, {"loss": loss.item(), "temperature": model.temperature}


def train_fast(model, train: LoadedSplit, cfg: FastTrainConfig, progress: bool = True, loss_fn=fast_loss,
               batches: FastBatches | None = None, **loop) -> list[dict]:
    """Train the Fast model; returns the per-step history (loss, temperature, samples/s).

    `loss_fn(model, batch) -> (loss, metrics)`; the distillation loss plugs in here. `loop` passes
    resume / steps_per_epoch / on_step through to `fastslow.train.loop.fit` (the Ray Train job uses them).
    """
    batches = batches or FastBatches(model, train, cfg, progress)
    return fit(model, batches, cfg, loss_fn, progress, desc="training fast", **loop)


