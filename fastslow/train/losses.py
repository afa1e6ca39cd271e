"""Contrastive losses of the Fast model.

The InfoNCE loss gathers embeddings, with gradient, from every process of the
default process group when one is initialised. Each process scores its local rows
against all gathered columns (and the transpose), so with gradients averaged
across processes (DDP, Ray Train) one step equals a single process over the
concatenated batch.
"""

from __future__ import annotations

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


def infonce_loss(visual: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the (gathered) batch; row i of `visual` matches row i of `text`.

    `visual` and `text` are this process's L2-normalised embeddings (B, E);
    `logit_scale` is the multiplier (1 / temperature), already exponentiated.
    Returns this process's share: the mean over its local rows of the
    visual-to-text and text-to-visual cross-entropies, averaged (weighted by
    `local_share` when processes hold different numbers of rows).
    """
    all_visual, offset = gather_with_grad(visual)
    all_text, _ = gather_with_grad(text)
    targets = torch.arange(visual.shape[0], device=visual.device) + offset
    logits_v2t = logit_scale * visual @ all_text.T
    logits_t2v = logit_scale * text @ all_visual.T
    loss = 0.5 * (F.cross_entropy(logits_v2t, targets) + F.cross_entropy(logits_t2v, targets))
    return loss * local_share(visual.shape[0], all_visual.shape[0])


def local_share(local_rows: int, total_rows: int) -> float:
    """Weight of a per-process mean so that averaging over processes gives the mean over all rows.

    1 when every process holds the same number of rows (and without a process group).
    """
    _, world = distributed_world()
    return local_rows * world / total_rows
