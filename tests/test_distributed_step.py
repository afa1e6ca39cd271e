"""One training step of 2 gloo processes with batch B equals 1 process with batch 2B: loss and gradients.

Drives the code a Ray Train worker runs: Fast's heads on cached tower features, the gathered
contrastive and distillation losses, and `fastslow.train.loop.average_gradients`.
"""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastslow.train.distillation import DistillationLoss, DistillConfig, TeacherTable
from fastslow.train.loop import average_gradients
from fastslow.models.config import FastConfig, TextTowerConfig, VisionTowerConfig
from fastslow.models.fast import FastModel
from fastslow.train.fast_training import Batch, fast_loss

WORLD, B = 2, 6


def _model() -> FastModel:
    torch.manual_seed(0)
    cfg = FastConfig(vision=VisionTowerConfig(kind="tiny_cnn", image_size=16, trainable=True, width=8),
                     text=TextTowerConfig(kind="tiny_transformer", trainable=True, width=16, depth=1, heads=2),
                     embed_dim=16, head_hidden=24)
    return FastModel(cfg)


def _data():
    g = torch.Generator().manual_seed(1)
    n, model = WORLD * B, _model()
    # Tower features, as a frozen tower's cache feeds them to the heads.
    visual = torch.randn(n, model.vision_tower.out_dim, generator=g)
    text = torch.randn(n, model.text_tower.out_dim, generator=g)
    items = np.arange(n)
    # Each item's teacher pool: itself and its two successors; scores favour the item itself.
    pool = np.stack([(items + d) % n for d in range(3)], axis=1)
    scores = np.array([[3.0, 1.0, -2.0]] * n) + np.random.default_rng(2).normal(size=(n, 3))
    return visual, text, items, TeacherTable(pool=pool, scores=scores)


def _batch(visual, text, items) -> Batch:
    return Batch(items=items, captions=items, visual=visual, text=text, texts=[])


def _loss_fn(name: str, table: TeacherTable):
    return fast_loss if name == "fast" else DistillationLoss(table, DistillConfig(weight=0.7, temperature=2.0))


def _step(model, loss_fn, batch) -> tuple[float, dict[str, torch.Tensor]]:
    loss, _ = loss_fn(model, batch)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    average_gradients(params)
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, port, name, cut, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    visual, text, items, table = _data()
    rows = slice(0, cut) if rank == 0 else slice(cut, WORLD * B)
    out[rank] = _step(_model(), _loss_fn(name, table), _batch(visual[rows], text[rows], items[rows]))
    dist.destroy_process_group()


# cut B: per-worker batch B each. cut B - 1: uneven (a batch that lost duplicate neighbours), weighted to match.
@pytest.mark.parametrize("cut", [B, B - 1])
@pytest.mark.parametrize("name", ["fast", "distill"])
def test_two_workers_step_equals_one_worker_with_the_concatenated_batch(name, cut):
    visual, text, items, table = _data()
    full_loss, full_grads = _step(_model(), _loss_fn(name, table), _batch(visual, text, items))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, name, cut, out), nprocs=WORLD, join=True)
    assert (out[0][0] + out[1][0]) / WORLD == pytest.approx(full_loss, rel=1e-5)
    for rank in range(WORLD):
        grads = out[rank][1]
        assert set(grads) == set(full_grads) and len(grads) > 4
        for n, g in full_grads.items():
            torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-6, msg=f"{name}: gradient of {n}")
