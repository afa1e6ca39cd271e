"""Compositional splits of the synthetic benchmark: which scene types (group keys) each split draws from."""

from __future__ import annotations

import numpy as np

UNCAPTIONED = "uncaptioned"  # images drawn like the train split's, written without captions (images_uncaptioned/)

# Shares of the scene types (group keys) that only the test and only the validation split draw from; training
# and the uncaptioned images draw from the rest. A test scene's combination (which colour with which shape,
# where, doing what) is never seen in training, while every word is.
HELD_OUT = {"test": 1 / 3, "val": 1 / 6}


def split_keys(keys: list[tuple], seed: int, media: str) -> dict[str, list[tuple]]:
    """The group keys each split draws from: disjoint between test, val and train (uncaptioned: train's)."""
    order = np.random.default_rng([seed, 0 if media == "image" else 1, 99]).permutation(len(keys))
    n_test, n_val = int(len(keys) * HELD_OUT["test"]), int(len(keys) * HELD_OUT["val"])
    train = [keys[i] for i in order[n_test + n_val :]]
    return {"test": [keys[i] for i in order[:n_test]], "val": [keys[i] for i in order[n_test : n_test + n_val]],
            "train": train, UNCAPTIONED: train}


def caption_overlap(items: list[dict]) -> float:
    """The share of test captions found word for word among the training captions (0 when compositional)."""
    train = {c for it in items if it["split"] == "train" for c in it["captions"]}
    test = [c for it in items if it["split"] == "test" for c in it["captions"]]
    return round(sum(c in train for c in test) / len(test), 4) if test else 0.0
