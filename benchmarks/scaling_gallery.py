"""The growing gallery of benchmarks.scaling: the validation split's images, then distractor scenes of other groups
(rendered, then generated around the rendered ones), with Fast's embeddings and Slow's features of each.

A distractor is a scene drawn from a group key (axis, colour pair, shape pair) of the training split, whose keys are
disjoint from the validation split's: every validation caption names its group's two colours, two shapes and their
relation, so no distractor satisfies it. Distractors are drawn without the optional third object, which could be
one of a validation caption's objects. Past the rendered ones, each further item is a new scene of a rendered
distractor's group drawn in Fast's embedding space (`generated_scenes`: the group's mean plus a random mix of its
rendered members' deviations from it, so with the group's own spread), re-ranked with the Slow features of the
member it draws most on: of a group no query matches, and as near the queries as that group's real scenes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from fastslow.data.decode import decode_image, decode_fit
from fastslow.inference.fast_embeddings import embed_items
from fastslow.inference.slow_scores import slow_features
from fastslow.synth import scenes
from fastslow.synth.generate import SynthConfig
from fastslow.synth.splits import split_keys

BATCH = 64


@dataclass
class Gallery:
    """`vectors[:N]` is the gallery of size N (the validation items first); `feature_row[i]` is the row of
    `features` (Slow's) that item i is re-ranked with."""

    vectors: torch.Tensor  # (N_max, E) float64, unit rows: Fast's embeddings
    features: torch.Tensor  # (n_val + rendered, ...) Slow's visual features
    feature_row: np.ndarray  # (N_max,) int64
    n_val: int
    rendered: int

    @property
    def generated(self) -> int:
        return len(self.vectors) - self.n_val - self.rendered


def group_of(scene: scenes.Scene) -> tuple:
    """A scene's group: its axis, colour pair and shape pair (as `scenes.group_keys` names them, in any order)."""
    return (scene.axis, tuple(sorted((scene.a.colour, scene.b.colour))), tuple(sorted((scene.a.shape, scene.b.shape))))


def distractor_scenes(synth: SynthConfig, count: int, seed: int) -> list[scenes.Scene]:
    """`count` scenes of the training split's groups, without a third object."""
    keys = split_keys(scenes.group_keys(), synth.seed, "image")["train"]
    rng = np.random.default_rng([seed, 7])
    return [scenes.sample_scene(rng, keys[rng.integers(len(keys))], distractor_prob=0.0) for _ in range(count)]


def rendered_pixels(drawn: list[scenes.Scene], synth: SynthConfig, size: int, fit: str,
                    progress: bool = False) -> np.ndarray:
    """Scenes rendered as the benchmark writes its images (PNG at the data's size) and decoded as the reader decodes
    them (to the model's size): (count, size, size, 3) uint8."""
    out = np.empty((len(drawn), size, size, 3), np.uint8)
    for i, scene in enumerate(tqdm(drawn, desc="rendering distractors", disable=not progress, leave=False)):
        buf = io.BytesIO()
        scenes.render_scene(scene, synth.image_size).save(buf, format="PNG")
        out[i] = decode_image(buf.getvalue(), size, fit)
    return out


def fast_vectors(model, pixels: np.ndarray, progress: bool = False) -> torch.Tensor:
    """Fast's unit embeddings of the items, float64 (as `fast_topk` scores them)."""
    model.eval()
    return embed_items(model, pixels, BATCH, progress).double()


def build_gallery(fast, slow, val_pixels: np.ndarray, synth: SynthConfig, largest: int, rendered: int, seed: int,
                  progress: bool = False) -> Gallery:
    """The gallery up to `largest` items: the validation items, `rendered` distractors (fewer if `largest` needs
    fewer), then generated copies of the distractors."""
    n_val = len(val_pixels)
    rendered = max(0, min(rendered, largest - n_val))
    size = fast.config.vision.image_size
    drawn = distractor_scenes(synth, rendered, seed)
    pixels = rendered_pixels(drawn, synth, size, decode_fit(fast.config.vision), progress)
    real = fast_vectors(fast, np.concatenate([val_pixels, pixels]), progress)
    features = torch.cat([slow_features(slow, val_pixels, progress=progress),
                          slow_features(slow, pixels, progress=progress)])
    extra = largest - n_val - rendered
    if extra > 0 and rendered == 0:
        raise ValueError("generated items are scenes of the rendered distractors' groups: render at least one")
    made, rows = generated_scenes(real[n_val:].numpy(), [group_of(d) for d in drawn], extra,
                                  np.random.default_rng([seed, 8]))
    vectors = torch.cat([real, torch.from_numpy(made)])
    return Gallery(vectors, features, np.concatenate([np.arange(n_val + rendered), n_val + rows]).astype(np.int64),
                   n_val, rendered)


def generated_scenes(vectors: np.ndarray, groups: list[tuple], count: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` unit vectors of new scenes of the groups of `vectors` (the rendered items, `groups[i]` item i's),
    the groups in proportion to their rendered items: each its group's mean plus its members' deviations from the
    mean mixed with Gaussian weights (so spread as the group's members are); and for each, the member whose
    deviation weighs most (its Slow features re-rank the item). A group of one member gives copies of it."""
    names = sorted(set(groups))
    label = np.array([names.index(g) for g in groups])
    of = label[np.arange(count) % len(vectors)]
    out, rows = np.empty((count, vectors.shape[1])), np.empty(count, np.int64)
    for g in range(len(names)):
        members, pick = np.nonzero(label == g)[0], np.nonzero(of == g)[0]
        if not len(pick):
            continue
        mean = vectors[members].mean(0)
        weights = rng.standard_normal((len(pick), len(members))) / np.sqrt(max(len(members) - 1, 1))
        out[pick] = mean + weights @ (vectors[members] - mean)
        rows[pick] = members[np.abs(weights).argmax(1)]
    return out / np.linalg.norm(out, axis=1, keepdims=True), rows


def fast_ranks_and_top(queries: torch.Tensor, gallery: torch.Tensor, true_index: np.ndarray, k: int,
                       chunk: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over `gallery` in chunks (never a Q x N matrix): each query's true item's rank (ties against the query,
    as `ranks_of_true`), and its top k (scores, indices), best first. The true items lie in the first chunk (the
    validation items come first), whose scores give their true scores: the very figures the ranks compare."""
    if int(np.max(true_index)) >= chunk:
        raise ValueError(f"true items must lie in the first {chunk} gallery rows")
    q = queries.double()
    true_scores = None
    ranks = torch.zeros(len(q), dtype=torch.long)
    top_s = torch.full((len(q), 0), -np.inf, dtype=torch.float64)
    top_i = torch.zeros((len(q), 0), dtype=torch.long)
    for start in range(0, len(gallery), chunk):
        s = q @ gallery[start : start + chunk].T
        if true_scores is None:
            true_scores = s.gather(1, torch.as_tensor(true_index, dtype=torch.long)[:, None])
        ranks += (s >= true_scores).sum(1)
        part = s.topk(min(k, s.shape[1]), dim=1)
        both_s = torch.cat([top_s, part.values], 1)
        both_i = torch.cat([top_i, part.indices + start], 1)
        best = both_s.topk(min(k, both_s.shape[1]), dim=1)
        top_s, top_i = best.values, both_i.gather(1, best.indices)
    return ranks.numpy(), top_s.numpy(), top_i.numpy()
