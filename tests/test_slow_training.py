"""Slow training and batched scoring: the score matrix equals pair-by-pair scores, and training learns binding."""

import numpy as np
import pytest
import torch
from helpers import tiny_slow

from fastslow.data.loaded import LoadedSplit
from fastslow.data.types import ReadReport
from fastslow.errors import FastslowError
from fastslow.models import SlowModel
from fastslow.train.slow_training import SlowTrainConfig, make_slow_model, train_slow
from fastslow.inference.slow_scores import slow_features, slow_score_matrix

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "yellow": (230, 230, 20)}
TEXTS = ["red green", "a blue square", "green red", "yellow", "the blue circle is left of the red one"]


def two_colour_split(n: int, seed: int) -> LoadedSplit:
    """16x16 images: one colour on the left half, another on the right; caption "<left> <right>"."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    pixels = np.zeros((n, 16, 16, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        left, right = rng.choice(len(names), size=2, replace=False)
        pixels[i, :, :8] = COLOURS[names[left]]
        pixels[i, :, 8:] = COLOURS[names[right]]
        pixels[i] = np.clip(pixels[i] + rng.integers(-20, 21, size=(16, 16, 3)), 0, 255)
        captions.append([f"{names[left]} {names[right]}"])
    ids = [str(i) for i in range(n)]
    return LoadedSplit(media="image", ids=ids, uris=ids, pixels=pixels, captions=captions,
                       report=ReadReport(source="two colours"))


@pytest.mark.parametrize("batch_pairs", [4, 64])
def test_score_matrix_equals_pair_by_pair_scores(batch_pairs):
    torch.manual_seed(0)
    model = SlowModel(tiny_slow()).eval()
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    features = slow_features(model, images.numpy(), batch_size=4)
    gallery = torch.arange(6).expand(len(TEXTS), -1)
    shortlist = torch.tensor([[5, 0, 2], [1, 1, 3], [4, 2, 0], [0, 5, 3], [2, 4, 1]])
    # Many queries sharing few candidates: scored in groups per item (10 here), some groups padded.
    crowded = torch.randint(0, 6, (5, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tokens = model.visual_tokens(features)
        for cand in (gallery, shortlist, crowded):
            got = slow_score_matrix(model, features, TEXTS, cand, batch_pairs=batch_pairs)
            assert got.dtype == np.float64 and got.shape == tuple(cand.shape)
            expected = np.array([[model.score(tokens[j : j + 1], [TEXTS[q]]).item() for j in row.tolist()]
                                 for q, row in enumerate(cand)])
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_slow_over_a_gallery_keeps_float64_as_re_ranking_does():
    """The whole-gallery path returns the scorer's float64 sums unrounded (it once cast them to float32, so
    near-ties broke differently from re-ranking a shortlist of the same items)."""
    torch.manual_seed(0)
    model = SlowModel(tiny_slow()).eval()
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    features = slow_features(model, images.numpy())
    got = slow_score_matrix(model, features, TEXTS, torch.arange(6).expand(len(TEXTS), -1))
    with torch.no_grad():
        kv = model.memory_kv(model.visual_tokens(features))
        direct = model.grid_scores(kv, slice(0, 6), TEXTS).numpy()
    assert direct.dtype == np.float64
    np.testing.assert_array_equal(got, direct)
    assert (got.astype(np.float32).astype(np.float64) != got).any()


def test_score_matrix_on_videos_and_bad_candidates():
    torch.manual_seed(0)
    model = SlowModel(tiny_slow()).eval()
    clips = torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    features = slow_features(model, clips.numpy())
    assert features.shape[:2] == (3, 4)
    # The time-reversed clip is a different item to the Slow model.
    features = torch.cat([features, features[:1].flip(1)])
    scores = slow_score_matrix(model, features, TEXTS[:2], torch.arange(4).expand(2, -1))
    assert scores.shape == (2, 4) and (scores[:, 0] != scores[:, 3]).all()
    with pytest.raises(FastslowError, match="outside"):
        slow_score_matrix(model, features, TEXTS[:1], torch.tensor([[4]]))
    with pytest.raises(FastslowError, match=r"\(Q, K\)"):
        slow_score_matrix(model, features, TEXTS[:2], torch.tensor([[0]]))


def test_cached_features_are_float16_for_a_frozen_tower():
    model = SlowModel(tiny_slow(trainable=False)).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    cached = slow_features(model, images, batch_size=2)
    assert cached.dtype == torch.float16 and cached.shape == (5, 16 * 64 + 32 * 16)
    with torch.no_grad():
        torch.testing.assert_close(cached.float(), model.visual_features(torch.from_numpy(images)),
                                   rtol=2e-3, atol=2e-3)


def test_training_learns_which_colour_is_where():
    train, test = two_colour_split(96, seed=0), two_colour_split(48, seed=1)
    texts, _ = train.caption_pairs()
    torch.manual_seed(0)
    model = make_slow_model(tiny_slow(trainable=False, image_size=16), texts)
    assert sorted(model.config.output_vocab) == sorted({b for t in texts for b in t.encode()})
    history = train_slow(model, train, SlowTrainConfig(epochs=16, batch_size=16, lr=1e-2, warmup_steps=5),
                         progress=False)
    assert len(history) == 16 * 6 and history[-1]["loss"] < 0.5 * history[0]["loss"]
    # Score each test image against its caption and the caption with the colours swapped.
    truth = [c[0] for c in test.captions]
    swapped = [" ".join(c.split()[::-1]) for c in truth]
    features = slow_features(model, test.pixels)
    n = len(truth)
    scores = slow_score_matrix(model, features, truth + swapped, torch.arange(n).repeat(2)[:, None])[:, 0]
    rate = float(np.mean(scores[:n] > scores[n:]))
    assert rate > 0.8, rate
    # A word the training captions never held ("zq": bytes outside the decoder's vocabulary), anywhere in the
    # query, changes no candidate's score: the ranking over every test image is the query's without it.
    gallery = torch.arange(n).expand(n, -1)
    plain = slow_score_matrix(model, features, truth, gallery)
    for unseen in (["zq " + t for t in truth], [t.replace(" ", " zq ") for t in truth], [t + " qz!" for t in truth]):
        np.testing.assert_array_equal(slow_score_matrix(model, features, unseen, gallery), plain)


def test_training_a_trainable_tower_from_pixels():
    split = two_colour_split(16, seed=3)
    torch.manual_seed(0)
    model = SlowModel(tiny_slow(trainable=True, image_size=16))
    before = model.vision_tower.stem[0].weight.detach().clone()
    history = train_slow(model, split, SlowTrainConfig(epochs=2, batch_size=8, warmup_steps=1), progress=False)
    assert len(history) == 4 and all(np.isfinite(h["loss"]) for h in history)
    assert not torch.equal(before, model.vision_tower.stem[0].weight)
    assert not model.training
