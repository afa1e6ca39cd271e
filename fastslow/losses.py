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


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every process along dim 0, keeping the autograd graph."""
    _, world = distributed_world()
    if world == 1:
        return x
    # torch.distributed.nn's all_gather sums the gradients of every process's
    # copy back into the owner in backward, which plain dist.all_gather does not.
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def infonce_loss(visual: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the (gathered) batch; row i of `visual` matches row i of `text`.

    `visual` and `text` are this process's L2-normalised embeddings (B, E);
    `logit_scale` is the multiplier (1 / temperature), already exponentiated.
    Returns this process's share: the mean over its local rows of the
    visual-to-text and text-to-visual cross-entropies, averaged.
    """
    rank, _ = distributed_world()
    all_visual = gather_with_grad(visual)
    all_text = gather_with_grad(text)
    b = visual.shape[0]
    targets = torch.arange(b, device=visual.device) + rank * b
    logits_v2t = logit_scale * visual @ all_text.T
    logits_t2v = logit_scale * text @ all_visual.T
    return 0.5 * (F.cross_entropy(logits_v2t, targets) + F.cross_entropy(logits_t2v, targets))
