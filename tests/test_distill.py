"""The distillation term: zero when student and teacher agree, positive otherwise, and it trains the student."""

import numpy as np
import torch

from fastslow.train.distillation import DistillationLoss, DistillConfig, batch_targets, precompute_teacher, soft_target_loss
from fastslow.models.config import FastConfig, TextTowerConfig, VisionTowerConfig
from fastslow.models.fast import FastModel
from fastslow.train.fast_training import Batch


def test_zero_when_student_and_teacher_agree():
    torch.manual_seed(0)
    student = torch.randn(5, 8)
    # The teacher's scores at temperature 2 give exactly the student's distribution.
    teacher = 2.0 * student + 3.0
    assert soft_target_loss(student, teacher, temperature=2.0).abs().item() < 1e-6
    assert soft_target_loss(student, teacher.flip(1), temperature=2.0).item() > 0.1


def test_mask_limits_the_candidates():
    student = torch.tensor([[2.0, 1.0, 50.0]])
    teacher = torch.tensor([[2.0, 1.0, -50.0]])
    only_first_two = torch.tensor([[True, True, False]])
    assert soft_target_loss(student, teacher, 1.0, only_first_two).abs().item() < 1e-6
    assert soft_target_loss(student, teacher, 1.0).item() > 1.0


def fixed_teacher(teacher, features, texts, candidates, progress=False):
    """A teacher that believes item 5 matches every caption (score 10, else 0)."""
    return np.where(candidates.numpy() == 5, 10.0, 0.0)


def test_teacher_table_and_batch_targets():
    neighbours = np.array([[1, 5], [0, 5], [5, 0], [4, 5], [3, 5], [0, 1]])
    caption_item = np.array([0, 0, 1, 2, 3, 4, 5])
    table = precompute_teacher(None, None, ["c"] * 7, caption_item, neighbours, score_fn=fixed_teacher)
    assert table.pool[0].tolist() == [0, 1, 5] and table.scores[0].tolist() == [0.0, 0.0, 10.0]
    batch = Batch(items=np.array([0, 5, 3]), captions=np.array([1, 6, 4]), visual=None, text=None, texts=[])
    scores, mask = batch_targets(table, batch, batch.items)
    # Caption 1 (item 0): candidates 0 and 5 are in the batch, 1 is not.
    assert mask.tolist() == [[True, True, False], [True, True, False], [False, True, True]]
    assert scores[0, 1].item() == 10.0 and scores[0, 0].item() == 0.0


def test_distillation_loss_pulls_the_student_towards_the_teacher():
    torch.manual_seed(0)
    cfg = FastConfig(vision=VisionTowerConfig(kind="tiny_cnn", image_size=16, trainable=True, width=8),
                     text=TextTowerConfig(kind="tiny_transformer", trainable=True, width=16, depth=1, heads=2),
                     embed_dim=16, head_hidden=0)
    model = FastModel(cfg)
    pixels = torch.randint(0, 255, (6, 16, 16, 3), dtype=torch.uint8)
    texts = [f"caption {i}" for i in range(6)]
    neighbours = np.array([[j for j in range(6) if j != i] for i in range(6)])
    table = precompute_teacher(None, None, texts, np.arange(6), neighbours, score_fn=fixed_teacher)
    loss_fn = DistillationLoss(table, DistillConfig(weight=1.0))
    batch = Batch(items=np.arange(6), captions=np.arange(6), visual=pixels, text=texts, texts=texts)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(30):
        loss, metrics = loss_fn(model, batch)
        first = first if first is not None else metrics["distill"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert metrics["distill"] < 0.5 * first
    assert metrics["candidates"] == 6
    assert abs(metrics["loss"] - (metrics["contrastive"] + metrics["distill"])) < 1e-4
