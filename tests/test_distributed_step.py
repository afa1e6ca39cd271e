"""One training step of 2 gloo processes, each on its own shard, equals 1 process over the union: loss and gradients.

Drives the code a Ray Train worker runs: each process gets ITS OWN shard, numbered from 0 as a worker's
shard is, builds its own batches (`FastBatches`, frozen towers' cached features) and its own teacher table
from that shard only; then Fast's heads, the gathered contrastive and distillation losses, and
`fastslow.train.loop.average_gradients`. Captions repeat word for word, within and across the shards.
"""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastslow.data.loaded import LoadedSplit
from fastslow.data.types import ReadReport
from fastslow.models.config import FastConfig, TextTowerConfig, VisionTowerConfig
from fastslow.models.fast import FastModel
from fastslow.train.distillation import DistillationLoss, DistillConfig, TeacherTable, precompute_teacher
from fastslow.train.fast_training import Batch, FastBatches, FastTrainConfig, fast_loss
from fastslow.train.loop import average_gradients

WORLD, N = 2, 12


def _model() -> FastModel:
    torch.manual_seed(0)
    cfg = FastConfig(vision=VisionTowerConfig(kind="tiny_cnn", image_size=16, width=8),
                     text=TextTowerConfig(kind="tiny_transformer", width=16, depth=1, heads=2),
                     embed_dim=16, head_hidden=24)
    return FastModel(cfg)


def _shard(rows: range) -> LoadedSplit:
    """The items `rows` of a 12-item split, as a worker holds them: its own list, numbered from 0.

    Each item has two captions; "shape k" repeats every 4 items, so several images share a caption."""
    pixels = np.random.default_rng(1).integers(0, 256, (N, 16, 16, 3), dtype=np.uint8)[rows.start : rows.stop]
    ids = [f"img{i}" for i in rows]
    return LoadedSplit(media="image", ids=ids, uris=ids, pixels=pixels,
                       captions=[[f"shape {i % 4}", f"item {i} alone"] for i in rows], report=ReadReport())


def _teacher(teacher, features, texts, candidates, progress=False):
    """A stand-in Slow teacher: a score from the candidate's features and the caption (no model needed)."""
    words = np.array([len(t) for t in texts], dtype=np.float64)[:, None]
    return 10 * features[candidates].flatten(2).mean(-1).double().numpy() + 0.1 * words


def _prepared(rows: range) -> tuple[FastModel, TeacherTable, Batch]:
    """What `prepare_training("distill", ...)` builds on a shard (with the stand-in teacher), and a batch of
    all its items; every third item with its second caption."""
    model = _model()
    batches = FastBatches(model, _shard(rows), FastTrainConfig(neighbours=1, neighbour_pool=2), progress=False)
    table = precompute_teacher(None, batches.cached_visual, batches.texts, batches.caption_item,
                               batches.neighbour_table, score_fn=_teacher, item_offset=batches.item_offset)
    items = np.arange(len(rows))
    return model, table, batches.batch(items, batches.first_caption + (items % 3 == 2))


def _union(parts: list[tuple[TeacherTable, Batch]]) -> tuple[TeacherTable, Batch]:
    """The split of all shards, in shard order, as one process holds it: its table and its batch of every item."""
    (t0, b0), (t1, b1) = parts
    items, captions = len(t0.pool), len(t0.scores)  # the union numbers shard 1's items and captions after shard 0's
    table = TeacherTable(pool=np.concatenate([t0.pool, t1.pool + items]), scores=np.concatenate([t0.scores, t1.scores]))
    batch = Batch(items=np.concatenate([b0.items, b1.items + items]),
                  captions=np.concatenate([b0.captions, b1.captions + captions]),
                  visual=torch.cat([b0.visual, b1.visual]), text=torch.cat([b0.text, b1.text]),
                  texts=b0.texts + b1.texts, text_keys=np.concatenate([b0.text_keys, b1.text_keys]))
    return table, batch


def _loss_fn(name: str, table: TeacherTable):
    return fast_loss if name == "fast" else DistillationLoss(table, DistillConfig(weight=0.7, temperature=2.0))


def _step(model, loss_fn, batch) -> tuple[float, dict, dict[str, torch.Tensor]]:
    loss, metrics = loss_fn(model, batch)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    average_gradients(params)
    return loss.item(), metrics, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, port, name, cut, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    model, table, batch = _prepared(range(0, cut) if rank == 0 else range(cut, N))
    out[rank] = _step(model, _loss_fn(name, table), batch)
    dist.destroy_process_group()


# cut 6: a per-worker batch of 6 each. cut 5: uneven (a batch that lost duplicate neighbours), weighted to match.
@pytest.mark.parametrize("cut", [N // 2, N // 2 - 1])
@pytest.mark.parametrize("name", ["fast", "distill"])
def test_two_workers_on_their_own_shards_step_as_one_worker_over_the_union(name, cut):
    shards = [_prepared(range(0, cut)), _prepared(range(cut, N))]
    table, batch = _union([(t, b) for _, t, b in shards])
    keys = batch.text_keys
    assert (keys[:cut, None] == keys[None, cut:]).any()  # captions that read the same on both workers
    assert all(t.pool.max() < len(t.pool) for _, t, _ in shards)  # each table holds its own shard only
    full_loss, full_metrics, full_grads = _step(_model(), _loss_fn(name, table), batch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, name, cut, out), nprocs=WORLD, join=True)
    assert (out[0][0] + out[1][0]) / WORLD == pytest.approx(full_loss, rel=1e-5)
    if name == "distill":
        # Candidates beyond the item itself (the teacher's neighbours) are in the batch, and each worker's
        # captions found their own item on their own column.
        assert full_metrics["candidates"] == pytest.approx(3.0) and full_metrics["distill"] > 0.01
        assert out[0][1]["own_target"] == out[1][1]["own_target"] == 1.0
    for rank in range(WORLD):
        grads = out[rank][2]
        assert set(grads) == set(full_grads) and len(grads) > 4
        for n, g in full_grads.items():
            torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-6, msg=f"{name}: gradient of {n}")
