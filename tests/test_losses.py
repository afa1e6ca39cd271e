"""InfoNCE against a hand-computed case, and gathered across two gloo processes."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fastslow.train.losses import infonce_loss, string_keys


def test_infonce_hand_computed_two_pairs():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    scale = torch.tensor(2.0)
    # Visual->text logits: [[2, 2*sqrt(.5)], [0, 2*sqrt(.5)]]; the matrix is the transpose for text->visual.
    s = 2 * math.sqrt(0.5)
    v2t = [-math.log(math.exp(2) / (math.exp(2) + math.exp(s))), -math.log(math.exp(s) / (math.exp(0) + math.exp(s)))]
    t2v = [-math.log(math.exp(2) / (math.exp(2) + math.exp(0))), -math.log(math.exp(s) / (math.exp(s) + math.exp(s)))]
    expected = 0.5 * (sum(v2t) / 2 + sum(t2v) / 2)
    assert infonce_loss(v, t, scale).item() == pytest.approx(expected, rel=1e-6)


def test_captions_that_read_the_same_are_not_each_others_negatives():
    """Rows 0 and 2 carry one caption text: each row's softmax leaves the other out, in both directions."""
    g = torch.Generator().manual_seed(0)
    v, t = (F.normalize(torch.randn(4, 8, generator=g), dim=1) for _ in range(2))
    keys = string_keys(["a red cube", "a blue ball", "a red cube", "a green cone"])
    assert keys[0] == keys[2] and len(set(keys.tolist())) == 3
    scale = torch.tensor(10.0)
    total = 0.0
    for logits in (scale * v @ t.T, scale * t @ v.T):
        for i in range(4):
            columns = [j for j in range(4) if j == i or keys[j] != keys[i]]
            total += -(logits[i, i] - torch.logsumexp(logits[i, columns], 0)) / 8
    assert infonce_loss(v, t, scale, keys).item() == pytest.approx(total.item(), rel=1e-6)
    assert infonce_loss(v, t, scale).item() != pytest.approx(total.item(), rel=1e-3)  # unmasked differs


def test_infonce_is_low_for_matching_and_high_for_shuffled_pairs():
    torch.manual_seed(0)
    v = F.normalize(torch.randn(16, 8), dim=1)
    scale = torch.tensor(50.0)
    assert infonce_loss(v, v, scale) < 0.1
    assert infonce_loss(v, v.roll(1, dims=0), scale) > 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, v_all, t_all, scale, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = v_all.shape[0] // world
    v = v_all[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    t = t_all[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    s = scale.clone().requires_grad_(True)
    loss = infonce_loss(v, t, s)
    loss.backward()
    # What DDP does: average the parameter gradients (here the scale's) across processes.
    s_grad = s.grad.clone()
    dist.all_reduce(s_grad)
    out[rank] = (loss.detach(), v.grad, t.grad, s_grad / world)
    dist.destroy_process_group()


def test_gathered_infonce_over_two_processes_equals_one_process_over_concatenated_batch():
    torch.manual_seed(1)
    world, b = 2, 4
    v_all = F.normalize(torch.randn(world * b, 6), dim=1)
    t_all = F.normalize(torch.randn(world * b, 6), dim=1)
    scale = torch.tensor(7.0)

    v, t, s = v_all.clone().requires_grad_(True), t_all.clone().requires_grad_(True), scale.clone().requires_grad_(True)
    full = infonce_loss(v, t, s)
    full.backward()

    out = mp.Manager().dict()
    mp.spawn(_worker, args=(world, _free_port(), v_all, t_all, scale, out), nprocs=world, join=True)
    mean_loss = sum(out[r][0] for r in range(world)) / world
    assert mean_loss.item() == pytest.approx(full.item(), rel=1e-5)
    # Each process's embedding gradients carry every process's loss; averaged like DDP they equal the full batch's.
    for r in range(world):
        _, v_grad, t_grad, s_grad = out[r]
        torch.testing.assert_close(v_grad / world, v.grad[r * b : (r + 1) * b], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(t_grad / world, t.grad[r * b : (r + 1) * b], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s_grad, s.grad, rtol=1e-5, atol=1e-6)
