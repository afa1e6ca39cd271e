"""Distilling the Slow model into the Fast one (the paper's training-time use of Slow).

The Fast student keeps its contrastive loss and adds a soft-target term: for each
caption of the batch, its candidates are the batch items among its item's nearest
neighbours (plus the item itself), and the student's distribution over them is
pulled towards the softmax of the frozen Slow teacher's scores. Nearest neighbours
are where the teacher knows what the student does not (swapped attributes and
relations); scoring them once per caption before training, instead of per step,
keeps the teacher's cost to one pass over (caption, neighbour) pairs.

Under Ray Train each worker numbers its shard's items from 0 and scores its own captions against its
own shard's neighbours; the table therefore names candidates by global item numbers (the shard's
offset plus the local index, `Batch.global_items`), and the batch's columns are matched by the
gathered global numbers, so a caption's targets land on its own worker's items.

Identical caption texts need no masking in the soft term: its candidates are the teacher's, and an
image whose caption reads the same gets whatever score the teacher gives it, not a forced zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastslow.errors import FastslowError
from fastslow.train.losses import gather_ids, gather_with_grad, infonce_loss, local_share
from fastslow.train.fast_training import Batch, embed_batch


@dataclass
class DistillConfig:
    """Weight and temperature of the soft-target term."""

    weight: float = 1.0
    # The teacher's scores are caption log-likelihoods, tens of nats apart: at 1 the targets are
    # near one-hot. Tuning on the quick synthetic images: distilled Fast R@1 rose from T=1 to 5 to 10 (49, 52 / 54, 60).
    temperature: float = 10.0


def soft_target_loss(student_logits: torch.Tensor, teacher_scores: torch.Tensor, temperature: float,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student)) over each row's candidates, averaged over rows.

    `mask` (B, C) marks each row's candidates (all when None). Zero exactly when
    the student's distribution over the candidates equals the teacher's soft targets.
    """
    if mask is not None:
        student_logits = student_logits.masked_fill(~mask, float("-inf"))
        teacher_scores = teacher_scores.masked_fill(~mask, float("-inf"))
    target = F.softmax(teacher_scores.double() / temperature, dim=1).to(student_logits.dtype)
    log_student = F.log_softmax(student_logits, dim=1)
    terms = target * (torch.log(target.clamp_min(1e-12)) - log_student)
    # Outside the candidates both sides are zero probability: no contribution (and no 0 * inf).
    terms = torch.where(target > 0, terms, torch.zeros_like(terms))
    return terms.sum(dim=1).mean()


@dataclass
class TeacherTable:
    """The Slow teacher's score of every training caption against its item and the item's nearest neighbours."""

    # (num_items, P+1), row = local item index: global numbers of the item itself, then of its neighbours.
    pool: np.ndarray
    scores: np.ndarray  # (num_captions, P+1) float64 teacher scores of caption c against pool[item of c]


def precompute_teacher(teacher, features: torch.Tensor, texts: list[str], caption_item: np.ndarray,
                       neighbours: np.ndarray, score_fn=None, progress: bool = False,
                       item_offset: int = 0) -> TeacherTable:
    """Score each caption against its item's pool once, before training.

    `neighbours` holds local item indices; `item_offset` is the split's global number of its item 0
    (`FastBatches.item_offset`: 0 in one process, the shard's place under Ray Train).
    """
    if score_fn is None:
        from fastslow.inference.slow_scores import slow_score_matrix as score_fn
    pool = np.concatenate([np.arange(len(neighbours))[:, None], neighbours], axis=1).astype(np.int64)
    scores = score_fn(teacher, features, texts, torch.from_numpy(pool[caption_item]), progress=progress)
    return TeacherTable(pool=pool + item_offset, scores=np.asarray(scores, dtype=np.float64))


def batch_targets(table: TeacherTable, batch: Batch, all_items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher scores, candidate mask), both (B, len(all_items)), for the local captions against the gathered
    batch; `all_items`: the gathered batch's global item numbers (`Batch.global_items` of every process)."""
    column = {int(item): j for j, item in enumerate(all_items)}
    if len(column) != len(all_items):
        raise FastslowError(f"distillation batch: {len(all_items) - len(column)} gathered item numbers repeat; "
                            "each worker's items must carry distinct global numbers (Batch.offset)")
    b = len(batch.captions)
    scores = torch.full((b, len(all_items)), float("-inf"), dtype=torch.float64)
    mask = torch.zeros((b, len(all_items)), dtype=torch.bool)
    for row, (caption, item) in enumerate(zip(batch.captions, batch.items)):
        for slot, candidate in enumerate(table.pool[item]):
            j = column.get(int(candidate))
            if j is not None:
                scores[row, j] = table.scores[caption, slot]
                mask[row, j] = True
    return scores, mask


class DistillationLoss:
    """InfoNCE plus the soft-target term from a frozen Slow teacher; a `loss_fn` for `train_fast`."""

    def __init__(self, table: TeacherTable, cfg: DistillConfig):
        self.table, self.cfg = table, cfg

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict]:
        v, t = embed_batch(model, batch.visual, batch.text)
        scale = model.scale()
        contrastive = infonce_loss(v, t, scale, batch.text_keys)
        all_v, _ = gather_with_grad(v)
        student = scale * t @ all_v.T
        all_items, offset = gather_ids(batch.global_items, v.device)  # on the device: NCCL gathers CUDA tensors only
        teacher, mask = batch_targets(self.table, batch, all_items.cpu().numpy())
        soft = soft_target_loss(student, teacher.to(student.device), self.cfg.temperature, mask.to(student.device))
        soft = soft * local_share(len(v), len(all_v))
        loss = contrastive + self.cfg.weight * soft
        rows = torch.arange(len(v))
        return loss, {"loss": loss.item(), "contrastive": contrastive.item(), "distill": soft.item(),
                      "candidates": float(mask.sum(1).float().mean()), "temperature": model.temperature,
                      # The share of captions whose own item's teacher score sits on their own column: 1
                      # unless the table and the gathered numbers disagree (targets sent to the wrong items).
                      "own_target": float(mask[rows, rows + offset].float().mean())}
