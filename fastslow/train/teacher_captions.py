"""Captions for uncaptioned items from the Slow teacher: a transfer set for distillation.

On its own training set the teacher's soft targets are the labels again (the true item first
for 96.5% of quick synthetic captions, by a median 26 nats), so they teach Fast nothing new.
On items nobody captioned they do: Fast shortlists each item's captions from a text pool (the
training captions), Slow scores the shortlist, and the item keeps the captions within
`within` nats per token of Slow's best (paraphrases of one scene score alike), at most `most`.
Per token, not summed: every token costs nats, so a summed log-likelihood favours short captions.

The benchmark table's fast_distilled row of images (quick, seed 0, R@1 on the test queries):
Fast on the 4,000 captioned images 63.7; plus 4,000 uncaptioned images captioned this way 69.8.
An earlier run (one fine-tuned text layer): the same images with their true captions 66.4, with
Fast's own top 3 captions (no teacher) 64.6, against 66.8 with the teacher's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastslow.data.loaded import LoadedSplit
from fastslow.errors import FastslowError


@dataclass
class TeacherCaptionConfig:
    """How many pool captions Slow scores per item, and which of them the item keeps."""

    shortlist: int = 20
    # Nats per token below the teacher's best caption, chosen on the synthetic benchmark's val images
    # (README, "How the settings were chosen", has the runs' figures).
    within: float = 0.05
    most: int = 5

    def validate(self) -> None:
        if self.shortlist < 1 or self.most < 1:
            raise FastslowError(f"teacher captions: shortlist and most must be >= 1, got {self.shortlist}, {self.most}")
        if self.within < 0:
            raise FastslowError(f"teacher captions: within must be >= 0 nats, got {self.within}")


@torch.no_grad()
def fast_shortlist(fast, pixels: np.ndarray, pool: list[str], k: int, batch_size: int = 64) -> np.ndarray:
    """(N, k) indices into `pool` of each item's k best captions under Fast, best first."""
    fast.eval()
    visual = torch.cat([fast.encode_visual(torch.from_numpy(pixels[i : i + batch_size]))
                        for i in range(0, len(pixels), batch_size)])
    text = torch.cat([fast.encode_text(pool[i : i + 4 * batch_size]) for i in range(0, len(pool), 4 * batch_size)])
    return (visual @ text.T).topk(min(k, len(pool)), dim=1).indices.numpy()


def keep_best(scores: np.ndarray, shortlist: np.ndarray, pool: list[str], cfg: TeacherCaptionConfig) -> list[list[str]]:
    """Per item, the shortlisted captions within `cfg.within` of the teacher's best, best first, at most `cfg.most`."""
    kept = []
    for row, candidates in zip(scores, shortlist):
        order = np.argsort(-row, kind="stable")
        kept.append([pool[candidates[j]] for j in order[: cfg.most] if row[j] >= row[order[0]] - cfg.within])
    return kept


def teacher_captions(fast, teacher, features: torch.Tensor, pixels: np.ndarray, pool: list[str],
                     cfg: TeacherCaptionConfig = TeacherCaptionConfig(), score_fn=None,
                     progress: bool = False) -> list[list[str]]:
    """Captions for each of `pixels`' items: Fast's shortlist from `pool`, kept by the teacher's scores per token.

    `features` are the teacher's visual features of the same items (`slow_features`).
    """
    cfg.validate()
    if not pool:
        raise FastslowError("teacher captions: the caption pool is empty")
    if len(features) != len(pixels):
        raise FastslowError(f"teacher captions: {len(features)} teacher features for {len(pixels)} items")
    if score_fn is None:
        from fastslow.inference.slow_scores import slow_score_matrix as score_fn
    shortlist = fast_shortlist(fast, pixels, pool, cfg.shortlist)
    n, k = shortlist.shape
    # One row per (item, caption) pair, each against its own item: the scorer's (Q, 1) form.
    texts = [pool[j] for j in shortlist.reshape(-1)]
    items = torch.arange(n).repeat_interleave(k).unsqueeze(1)
    scores = np.asarray(score_fn(teacher, features, texts, items, progress=progress), dtype=np.float64)
    per_token = scores[:, 0] / teacher.scored_token_counts(texts).numpy()
    return keep_best(per_token.reshape(n, k), shortlist, pool, cfg)


def with_extra_items(split: LoadedSplit, pixels: np.ndarray, captions: list[list[str]], prefix: str) -> LoadedSplit:
    """`split` plus the extra items (ids `prefix` + number), each with its captions."""
    if len(captions) != len(pixels) or not all(captions):
        raise FastslowError(f"extra items: {len(pixels)} items need one non-empty caption list each")
    return LoadedSplit(media=split.media, ids=split.ids + [f"{prefix}{i}" for i in range(len(pixels))],
                       uris=split.uris + [""] * len(pixels), pixels=np.concatenate([split.pixels, pixels]),
                       captions=split.captions + captions, report=split.report)


def add_teacher_captioned(split: LoadedSplit, pixels: np.ndarray, fast, teacher, features: torch.Tensor,
                          cfg: TeacherCaptionConfig = TeacherCaptionConfig(), prefix: str = "transfer/",
                          progress: bool = False) -> tuple[LoadedSplit, list[list[str]]]:
    """`split` plus uncaptioned items (`pixels`, teacher `features`) captioned by the teacher from `split`'s
    captions, and those captions."""
    pool = sorted({c for caps in split.captions for c in caps})
    captions = teacher_captions(fast, teacher, features, pixels, pool, cfg, progress=progress)
    return with_extra_items(split, pixels, captions, prefix), captions
