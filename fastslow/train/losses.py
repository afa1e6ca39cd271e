"""Contrastive losses of the Fast model.

The InfoNCE loss gathers embeddings, with gradient, from every process of the
default process group when one is initialised. Each process scores its local rows
against all gathered columns (and the transpose), so with gradients averaged
across processes (DDP, Ray Train) one step equals a single process over the
concatenated batch.

Captions with identical text (common in synthetic data, where several images share one caption) are
never each other's negatives: each row carries a hash of its caption text, gathered like the
embeddings, and pairs of equal keys other than the positive are masked out of both directions.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gathered_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Every process's local row count, in rank order ([n] without a process group)."""
    _, world = distributed_world()
    if world == 1:
        return [n]
    local = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(out, local)
    return [int(t) for t in out]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(`x` of every process concatenated along dim 0 with the autograd graph kept, this process's row offset).

    Processes may hold different numbers of rows (a batch that lost duplicate items): rows are
    padded to the largest count for the collective and the padding dropped again.
    """
    rank, world = distributed_world()
    if world == 1:
        return x, 0
    sizes = gathered_sizes(x.shape[0], x.device)
    padded = torch.cat([x, x.new_zeros((max(sizes) - x.shape[0], *x.shape[1:]))])
    if x.requires_grad:
        # The backward of this gather sums every process's gradient for a row back into the row's
        # owner (a reduce-scatter), which plain dist.all_gather does not. Torch's deprecation notice
        # for torch.distributed.nn's all_gather names this function as its replacement.
        from torch.distributed._functional_collectives import all_gather_single_autograd

        gathered = all_gather_single_autograd(padded, 0, dist.group.WORLD)
        parts = gathered.split(padded.shape[0])
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0), sum(sizes[:rank])


def string_keys(strings: list[str]) -> np.ndarray:
    """A 63-bit hash of each string as int64, the same in every process (Python's `hash` is salted per process)."""
    return np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") >> 1
                     for s in strings], dtype=np.int64)


def global_offset(n: int) -> int:
    """The global number of this process's first item: the item counts of the lower ranks (0 without a process group).

    A collective: every process of the group calls it together.
    """
    rank, world = distributed_world()
    if world == 1:
        return 0
    # NCCL gathers CUDA tensors only; gloo takes CPU ones.
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    return sum(gathered_sizes(n, device)[:rank])


def gather_ids(ids, device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """(every process's int64 `ids`, concatenated in rank order; this process's row offset). No gradient."""
    return gather_with_grad(torch.as_tensor(ids, dtype=torch.long, device=device))


def duplicate_mask(text_keys, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, all rows): True where a local row's caption text equals a gathered row's, other than its own row."""
    local = torch.as_tensor(text_keys, dtype=torch.long, device=device)
    all_keys, offset = gather_ids(local, device)
    same = local[:, None] == all_keys[None, :]
    rows = torch.arange(len(local), device=device)
    same[rows, rows + offset] = False
    return same


def infonce_loss(visual: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                 text_keys=None) -> torch.Tensor:
    """Symmetric InfoNCE over the (gathered) batch; row i of `visual` matches row i of `text`.

    `visual` and `text` are this process's L2-normalised embeddings (B, E);
    `logit_scale` is the multiplier (1 / temperature), already exponentiated.
    `text_keys` (B,) int64: a hash of each row's caption text (`string_keys`); rows with equal
    keys are not each other's negatives (None: every other row is a negative).
    Returns this process's share: the mean over its local rows of the
    visual-to-text and text-to-visual cross-entropies, averaged (weighted by
    `local_share` when processes hold different numbers of rows).
    """
    all_visual, offset = gather_with_grad(visual)
    all_text, _ = gather_with_grad(text)
    targets = torch.arange(visual.shape[0], device=visual.device) + offset
    logits_v2t = logit_scale * visual @ all_text.T
    logits_t2v = logit_scale * text @ all_visual.T
    if text_keys is not None:
        # Image j whose caption reads exactly as caption i matches caption i as well as image i does (and
        # text j is then the very same input as text i): masked in both directions, it is no negative.
        same = duplicate_mask(text_keys, visual.device)
        logits_v2t = logits_v2t.masked_fill(same, float("-inf"))
        logits_t2v = logits_t2v.masked_fill(same, float("-inf"))
    loss = 0.5 * (F.cross_entropy(logits_v2t, targets) + F.cross_entropy(logits_t2v, targets))
    return loss * local_share(visual.shape[0], all_visual.shape[0])


def local_share(local_rows: int, total_rows: int) -> float:
    """Weight of a per-process mean so that averaging over processes gives the mean over all rows.

    1 when every process holds the same number of rows (and without a process group).
    """
    _, world = distributed_world()
    return local_rows * world / total_rows
