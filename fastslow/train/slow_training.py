"""One-process training of the Slow captioner, and batched Slow scoring of (query, candidate item) pairs.

As for Fast, a frozen tower runs once over the data and its maps are cached (in float16),
so an epoch only runs the fusion and the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from fastslow.data.loaded import LoadedSplit
from fastslow.errors import FastslowError
from fastslow.inference.slow_scores import slow_features
from fastslow.log import get_logger
from fastslow.train.loop import fit
from fastslow.models.blip_slow import BlipSlowModel
from fastslow.models.slow import SlowConfig, SlowModel, build_output_vocab
from fastslow.train.fast_training import Batch

log = get_logger(__name__)


@dataclass
class SlowTrainConfig:
    """Optimisation settings of the Slow model."""

    epochs: int = 10  # the synthetic benchmark: 15 for its 4,000 images (10 is seed-sensitive), 25 for its 1,200 videos
    batch_size: int = 16  # global (over all workers of a Ray job); small batches at a high rate learned binding far faster than 64 at 5e-4
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0
    encode_batch_size: int = 64
    grad_clip: float = 1.0  # max gradient norm; 0 = off


def make_slow_model(cfg: SlowConfig, train_texts: list[str]) -> SlowModel:
    """A Slow model whose decoder predicts over the tokens of `train_texts` (unless cfg already names a vocabulary)."""
    if cfg.output_vocab is None:
        cfg = replace(cfg, output_vocab=build_output_vocab(train_texts, cfg.text))
    return SlowModel(cfg)


def init_slow_model(cfg):
    """The model a `slow` run fine-tunes: the checkpoint `cfg.init` (its config, not cfg.model, applies), or None."""
    init = getattr(cfg, "init", "")
    if not init:
        return None
    from fastslow.inference.slow_scores import load_slow

    model = load_slow(init)
    if isinstance(model, BlipSlowModel) and model.config.head != "caption":
        raise FastslowError(f"init {init}: a BLIP with the {model.config.head!r} head; only the caption head "
                            "fine-tunes here (its captioning loss); use a matching head as it is")
    return model


class SlowBatches:
    """Slow training batches: each epoch every item once, with one of its captions drawn at random."""

    def __init__(self, model: SlowModel, split: LoadedSplit, cfg: SlowTrainConfig, progress: bool = True,
                 features: torch.Tensor | None = None):
        if len(split.ids) == 0:
            raise FastslowError("train_slow: the training split has no items")
        self.split, self.cfg = split, cfg
        self.texts, caption_item = split.caption_pairs()
        self.first_caption = np.searchsorted(caption_item, np.arange(len(split.ids)))
        self.num_captions = np.bincount(caption_item, minlength=len(split.ids))
        self.features = None
        if not model.config.vision.trainable:
            self.features = features if features is not None else slow_features(
                model, split.pixels, cfg.encode_batch_size, progress)

    def steps_per_epoch(self) -> int:
        return max(1, len(self.split.ids) // self.cfg.batch_size)

    def epoch(self, rng: np.random.Generator):
        order = rng.permutation(len(self.split.ids))
        b = self.cfg.batch_size
        for step in range(self.steps_per_epoch()):
            items = order[step * b : (step + 1) * b]
            captions = self.first_caption[items] + rng.integers(0, self.num_captions[items])
            visual = self.features[torch.from_numpy(items)] if self.features is not None else \
                torch.from_numpy(self.split.pixels[items])
            texts = [self.texts[i] for i in captions]
            yield Batch(items=items, captions=captions, visual=visual, text=texts, texts=texts)


def slow_loss(model: SlowModel | BlipSlowModel, batch: Batch) -> tuple[torch.Tensor, dict]:
    """The captioning loss of one batch (visual: cached tower features, or uint8 pixels for a trainable tower)."""
    feats = model.visual_features(batch.visual) if batch.visual.dtype == torch.uint8 else batch.visual
    loss = model.loss(model.visual_tokens(feats), batch.texts)
    return loss, {"loss": loss.item()}


def train_slow(model: SlowModel, split: LoadedSplit, cfg: SlowTrainConfig, progress: bool = True,
               features: torch.Tensor | None = None, batches: SlowBatches | None = None, **loop) -> list[dict]:
    """Train the captioner: each epoch every item once with one random caption. Returns the per-step history.

    `loop` passes resume / steps_per_epoch / on_step through to `fastslow.train.loop.fit`.
    """
    if model.config.output_vocab is None and model.tokenizer.vocab_size > 1000:
        log.warning("slow: no output_vocab, predicting over all %d tokenizer ids (slow); see make_slow_model",
                    model.tokenizer.vocab_size)
    batches = batches or SlowBatches(model, split, cfg, progress, features)
    return fit(model, batches, cfg, slow_loss, progress, desc="training slow", **loop)


