"""Teacher captions for uncaptioned items: Fast's shortlist, the teacher's best kept, the items added to a split."""

import numpy as np
import pytest
import torch

from fastslow.data.loaded import LoadedSplit
from fastslow.errors import FastslowError
from fastslow.models.config import FastConfig, TextTowerConfig, VisionTowerConfig
from fastslow.models.fast import FastModel
from fastslow.train.teacher_captions import TeacherCaptionConfig, fast_shortlist, keep_best, teacher_captions, with_extra_items

POOL = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square")]


def tiny_fast() -> FastModel:
    torch.manual_seed(0)
    return FastModel(FastConfig(vision=VisionTowerConfig(kind="tiny_cnn", image_size=16, trainable=True, width=8),
                                text=TextTowerConfig(kind="tiny_transformer", trainable=True, width=16, depth=1,
                                                     heads=2), embed_dim=16, head_hidden=0))


class WordCountTeacher:
    """A stand-in teacher whose score is read per word: `scored_token_counts` counts words plus an end token."""

    @staticmethod
    def scored_token_counts(texts):
        return torch.tensor([len(t.split()) + 1 for t in texts])


def pixels(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)


def test_fast_shortlist_is_fasts_own_ranking():
    fast, images = tiny_fast(), pixels(4)
    got = fast_shortlist(fast, images, POOL, k=3, batch_size=3)
    with torch.no_grad():
        sims = fast.encode_visual(torch.from_numpy(images)) @ fast.encode_text(POOL).T
    assert got.tolist() == sims.topk(3, dim=1).indices.tolist()
    assert fast_shortlist(fast, images, POOL, k=50).shape == (4, len(POOL))  # never more than the pool


def test_keep_best_keeps_the_captions_near_the_teachers_best():
    shortlist = np.array([[0, 1, 2, 3], [5, 4, 3, 2]])
    scores = np.array([[-9.0, -2.5, -2.0, -30.0],  # best 2, then 1 within 1 nat; 0 and 3 too far
                       [-1.0, -1.0, -1.0, -1.0]])  # ties: every one within, cut at `most`, shortlist order kept
    kept = keep_best(scores, shortlist, POOL, TeacherCaptionConfig(within=1.0, most=3))
    assert kept == [[POOL[2], POOL[1]], [POOL[5], POOL[4], POOL[3]]]
    assert keep_best(scores, shortlist, POOL, TeacherCaptionConfig(within=0.0, most=5))[0] == [POOL[2]]


def test_teacher_captions_follow_the_teacher_not_fast():
    fast, images = tiny_fast(), pixels(3)
    truth = {0: "a green square", 1: "a red circle", 2: "a blue circle"}
    asked = []

    def teacher(model, features, texts, items, progress=False):  # believes item u is `truth[u]`
        asked.append((len(texts), items.shape))
        return np.array([[0.0 if t == truth[int(i)] else -20.0] for t, i in zip(texts, items[:, 0])])

    cfg = TeacherCaptionConfig(shortlist=len(POOL), within=1.0, most=5)
    got = teacher_captions(fast, WordCountTeacher(), torch.zeros(3, 1), images, POOL, cfg, score_fn=teacher)
    assert got == [[truth[0]], [truth[1]], [truth[2]]]
    assert asked == [(3 * len(POOL), (3 * len(POOL), 1))]  # one pass, one row per (item, caption) pair


def test_captions_are_compared_per_token_not_summed():
    """Each extra token costs nats: summed, a short vague caption beats a long exact one; per token it does not."""
    fast, images = tiny_fast(), pixels(1)
    pool = ["a circle", "a small red circle left of a large blue square"]
    per_word = {pool[0]: -1.5, pool[1]: -0.5}  # the long caption fits better, word for word

    def teacher(model, features, texts, items, progress=False):
        return np.array([[per_word[t] * (len(t.split()) + 1)] for t in texts])  # summed: -4.5 against -5.5

    cfg = TeacherCaptionConfig(shortlist=2, within=0.0, most=1)
    assert teacher_captions(fast, WordCountTeacher(), torch.zeros(1, 1), images, pool, cfg, score_fn=teacher) == \
        [[pool[1]]]


def test_teacher_captions_refuse_bad_input():
    fast, images = tiny_fast(), pixels(2)
    with pytest.raises(FastslowError, match="pool is empty"):
        teacher_captions(fast, None, torch.zeros(2, 1), images, [])
    with pytest.raises(FastslowError, match="1 teacher features for 2 items"):
        teacher_captions(fast, None, torch.zeros(1, 1), images, POOL)
    with pytest.raises(FastslowError, match="within must be >= 0"):
        teacher_captions(fast, None, torch.zeros(2, 1), images, POOL, TeacherCaptionConfig(within=-1))


def test_with_extra_items_appends_every_item_with_its_captions():
    split = LoadedSplit(media="image", ids=["a", "b"], uris=["x/a", "x/b"], pixels=pixels(2),
                        captions=[["one"], ["two", "deux"]], report=None)
    extra = pixels(3)
    both = with_extra_items(split, extra, [["p"], ["q", "r"], ["s"]], prefix="u")
    assert both.ids == ["a", "b", "u0", "u1", "u2"] and len(both.pixels) == 5
    assert both.captions[2:] == [["p"], ["q", "r"], ["s"]] and (both.pixels[2:] == extra).all()
    texts, item = both.caption_pairs()
    assert len(texts) == 7 and item.tolist() == [0, 1, 1, 2, 3, 3, 4]
    with pytest.raises(FastslowError, match="non-empty caption list"):
        with_extra_items(split, extra, [["p"], [], ["s"]], prefix="u")


def test_default_scorer_is_slow_per_token_over_each_items_shortlist():
    """The expected captions come from Slow's plain forward pass (`SlowModel.score`, one pair at a time) divided by
    the byte count plus EOS, not from the batched scorer the code uses."""
    from helpers import tiny_slow

    from fastslow.train.slow_training import make_slow_model
    from fastslow.inference.slow_scores import slow_features

    fast, images = tiny_fast(), pixels(3)
    torch.manual_seed(0)
    pool = POOL + ["a red circle left of a blue square"]
    slow = make_slow_model(tiny_slow(trainable=False, image_size=16), pool)
    features = slow_features(slow, images)
    cfg = TeacherCaptionConfig(shortlist=5, within=0.0, most=1)
    got = teacher_captions(fast, slow, features, images, pool, cfg)
    shortlist = fast_shortlist(fast, images, pool, 5)
    with torch.no_grad():
        tokens = slow.visual_tokens(features.float())
        for u, caps in enumerate(got):
            mine = [pool[j] for j in shortlist[u]]
            per_token = [slow.score(tokens[u : u + 1], [t]).item() / (len(t.encode()) + 1) for t in mine]
            assert caps == [mine[int(np.argmax(per_token))]]
