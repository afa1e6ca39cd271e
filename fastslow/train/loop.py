"""The one optimisation loop of every model (Fast, Slow, distilled Fast): AdamW with warm-up and cosine decay.

Resumable: `TrainState` (optimizer and scheduler state, steps done) restarts a run at the step
it stopped, replaying the batch draws of the interrupted epoch so that a resumed run sees the
same batches as an uninterrupted one. Under a torch.distributed process group (Ray Train) the
gradients are averaged across processes after each backward; the losses gather their negatives
themselves, so one step of W processes with batch B equals one process with batch W x B.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from fastslow.devices import autocast, model_device
from fastslow.errors import FastslowError
from fastslow.train.losses import distributed_world


class Batches(Protocol):
    """What the loop needs of a batch source: an epoch's batches from a generator, and their number."""

    def steps_per_epoch(self) -> int: ...

    def epoch(self, rng: np.random.Generator) -> Iterator[Any]: ...


@dataclass
class TrainState:
    """Where a run is: optimizer steps done, and the optimizer and scheduler state (tensors and numbers only)."""

    step: int
    optimizer: dict
    scheduler: dict

    def to_dict(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer, "scheduler": self.scheduler}

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(step=int(d["step"]), optimizer=d["optimizer"], scheduler=d["scheduler"])


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The batch-drawing generator of one epoch: a resumed run redraws the same batches."""
    return np.random.default_rng([seed, epoch])


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over the default process group (one all-reduce of a flat buffer); no-op alone."""
    _, world = distributed_world()
    if world == 1 or not params:
        return
    # Zeros stand in for a missing gradient in the collective; a parameter no process touched stays without one.
    had = [p.grad is not None for p in params]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, has in zip(params, had):
        part = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        if has or bool(part.any()):
            p.grad = part.clone()


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's groups as open_clip makes them: weight decay on weight matrices and embeddings (2-D and up) only;
    gains, biases and the logit scale are not pulled towards 0."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if p.ndim < 2 or name.endswith("logit_scale") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def fit(model: torch.nn.Module, batches: Batches, cfg, loss_fn: Callable, progress: bool = True,
        desc: str = "training", resume: TrainState | None = None, steps_per_epoch: int | None = None,
        on_step: Callable[[dict, Callable[[], TrainState]], None] | None = None) -> list[dict]:
    """Run cfg.epochs epochs of `loss_fn(model, batch) -> (loss, metrics)`; returns the per-step history.

    `cfg` has epochs, lr, weight_decay, warmup_steps, seed and optionally grad_clip. `steps_per_epoch`
    overrides the batch source's (distributed workers must agree on it). `on_step(record, state)` runs
    after every step; `state()` gives the TrainState to checkpoint. A model's `after_optimizer_step()`, if it
    has one, runs after each optimiser step (Fast clamps its logit scale there).
    """
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr)
    after_step = getattr(model, "after_optimizer_step", None)
    per_epoch = steps_per_epoch or batches.steps_per_epoch()
    total = cfg.epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, cfg.warmup_steps))
    step = 0
    if resume is not None:
        if resume.step > total:
            raise FastslowError(f"resume: the checkpoint is at step {resume.step}, past this run's {total} steps")
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        step = resume.step
    grad_clip = getattr(cfg, "grad_clip", 0.0)

    def state() -> TrainState:
        return TrainState(step=step, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())

    model.train()
    history: list[dict] = []
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress)
    device = model_device(model)
    for epoch in range(step // per_epoch, cfg.epochs):
        for i, batch in enumerate(batches.epoch(epoch_rng(cfg.seed, epoch))):
            if i >= per_epoch:
                break
            if epoch * per_epoch + i < step:  # drawn before the interruption: skip, but keep the draws in step
                continue
            t0 = time.perf_counter()
            with autocast(device):
                loss, metrics = loss_fn(model, batch)
            loss = loss.float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(params)
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            if after_step is not None:
                after_step()
            scheduler.step()
            step += 1
            _, world = distributed_world()
            record = {"step": step, "epoch": epoch, **metrics,
                      "samples_per_s": world * len(batch.items) / (time.perf_counter() - t0)}
            history.append(record)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items() if k in ("loss", "temperature")})
            if on_step is not None:
                on_step(record, state)
    bar.close()
    model.eval()
    return history


def worker_batch_size(batch_size: int, workers: int) -> int:
    """Each of `workers` data-parallel workers' share of the global `batch_size` (which must divide evenly)."""
    if batch_size % workers:
        raise FastslowError(f"train.batch_size={batch_size} is the global batch: it must be a multiple of "
                            f"job.num_workers={workers} (each worker takes an equal share)")
    return batch_size // workers
