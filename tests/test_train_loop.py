"""The optimisation loop: AdamW's weight-decay groups and the clamped logit scale, as open_clip has them."""

import math

import numpy as np
import torch
from helpers import tiny_config

from fastslow.models import FastModel
from fastslow.train.loop import fit


class _Batches:
    """Two steps an epoch of nothing in particular: the losses below make their own gradients."""

    def steps_per_epoch(self) -> int:
        return 2

    def epoch(self, rng: np.random.Generator):
        for _ in range(2):
            yield type("B", (), {"items": np.arange(1)})()


class _Cfg:
    epochs, lr, warmup_steps, seed, weight_decay, grad_clip = 5, 2.0, 0, 0, 0.1, 0.0


def _fit(model, loss):
    return fit(model, _Batches(), _Cfg(), lambda m, b: (loss(m), {"loss": 0.0}), progress=False)


def test_the_logit_scale_stays_within_0_and_log_100():
    model = FastModel(tiny_config())
    _fit(model, lambda m: -1000 * m.logit_scale)  # pushes the scale up, far past log 100 at this rate
    assert model.logit_scale.item() == torch.tensor(math.log(100.0)).item()
    assert abs(model.temperature - 0.01) < 1e-6
    _fit(model, lambda m: 1000 * m.logit_scale)  # and down, past 0 (AdamW moves it by about lr a step)
    assert model.logit_scale.item() == 0.0 and model.temperature == 1.0


def test_weight_decay_spares_gains_biases_and_the_scale():
    """A loss with zero gradient everywhere: only weight decay moves a parameter, and only matrices move."""
    model = FastModel(tiny_config())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    _fit(model, lambda m: 0 * sum(p.sum() for p in m.parameters() if p.requires_grad))
    moved = {n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p)}
    matrices = {n for n, p in before.items() if p.ndim >= 2}
    assert moved == matrices and "logit_scale" not in moved
    assert any(n.endswith("bias") for n in before) and any("norm" in n for n in before)
