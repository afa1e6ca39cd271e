""""Why this result": Slow's attention maps (fastslow.inference.slow_attention) through the re-ranker the Serve app
calls. A tiny Slow trained here (`fastslow train slow`, about 40 s) on scenes of one object at a random place,
captioned "a <colour> <shape>": to predict the colour word it must look at the object, so its map follows the
object from left to right. The maps over HTTP: tests/test_serve_app_query.py."""

import json

import numpy as np
import pytest
import torch
from helpers import fastslow_cli
from PIL import Image

from fastslow.inference.slow_attention import attention_maps
from fastslow.inference.slow_scores import load_slow, slow_features
from fastslow.search.reranker import Reranker
from fastslow.synth.scenes import Obj, background, draw_objects

pytestmark = pytest.mark.integration  # trains with the `fastslow` command, in a process of its own

COLOURS, SHAPES = ("red", "green", "blue", "yellow"), ("circle", "square", "triangle")
SIZE = 64


def _scene(colour: str, shape: str, x: float, y: float, grey: int = 128, seed: int = 3) -> Image.Image:
    canvas = background(SIZE, grey, seed)
    draw_objects(canvas, [Obj(colour, shape, "large", x, y)])
    return canvas.resize((SIZE, SIZE), Image.BOX)


@pytest.fixture(scope="module")
def one_object_slow(tmp_path_factory) -> str:
    """A tiny Slow (the demo's tiny kinds) trained for 15 epochs on 280 one-object scenes (Karpathy format)."""
    data = tmp_path_factory.mktemp("one_object")
    rng = np.random.default_rng(0)
    images = []
    for i in range(300):
        colour, shape = COLOURS[rng.integers(4)], SHAPES[rng.integers(3)]
        _scene(colour, shape, rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.7), int(rng.integers(90, 160)),
               int(rng.integers(1000))).save(data / f"{i:04d}.png")
        images.append({"filename": f"{i:04d}.png", "imgid": i, "split": "train" if i < 280 else "val",
                       "sentences": [{"raw": f"a {colour} {shape}"}]})
    (data / "dataset_one_object.json").write_text(json.dumps({"dataset": "one_object", "images": images}))
    out = tmp_path_factory.mktemp("one_object_slow")
    fastslow_cli("train", "slow", "--data", str(data), "--out", str(out), "--config", "configs/slow_synth_images.yaml",
                 "model.vision.kind=tiny_cnn", "model.vision.image_size=32", "model.vision.trainable=true",
                 "model.text.kind=tiny_transformer", "model.dim=32", "model.heads=2", "model.ffn=64",
                 "train.epochs=15", "train.batch_size=16")
    return str(out / "checkpoint")


def _centre_x(found: dict, token: int) -> float:
    """Where token `token`'s map lies across the width (0 left, 1 right): its mean column, as a fraction."""
    maps = np.asarray(found["maps"], dtype=np.float64)[token]
    per_column = maps.reshape(-1, *found["grid"]).sum(axis=(0, 1))
    return float((per_column * (np.arange(len(per_column)) + 0.5) / len(per_column)).sum())


def test_maps_have_the_grids_shape_and_sum_to_one_per_token(one_object_slow):
    model = load_slow(one_object_slow).eval()
    rows, cols = model.image_layout.grid
    image = np.asarray(_scene("red", "circle", 0.3, 0.5))[None].copy()
    found = attention_maps(model, slow_features(model, image)[0], "a red circle")
    assert found["tokens"] == list("a red circle") and found["grid"] == [rows, cols] and found["frames"] is None
    assert tuple(found["maps"].shape) == (len("a red circle"), rows, cols)
    assert torch.allclose(found["maps"].sum(dim=(1, 2)), torch.ones(len("a red circle")), atol=1e-5)
    assert (found["maps"] >= 0).all()
    # A video: each token's map covers every frame's grid, and sums to 1 over all of them.
    video = np.stack([np.asarray(_scene("blue", "square", x, 0.5)) for x in (0.2, 0.4, 0.6, 0.8)])[None]
    found = attention_maps(model, slow_features(model, video)[0], "a blue square")
    vrows, vcols = model.video_layout.grid
    assert found["frames"] == 4 and tuple(found["maps"].shape) == (len("a blue square"), 4, vrows, vcols)
    assert torch.allclose(found["maps"].sum(dim=(1, 2, 3)), torch.ones(len("a blue square")), atol=1e-5)
    # Words Slow never learnt are left out of the tokens, as they are of the score.
    assert attention_maps(model, slow_features(model, image)[0], "a red circle zebra\u00e9")["tokens"] == \
        list("a red circle")


def test_the_map_of_the_object_named_moves_with_the_object(one_object_slow, tmp_path):
    reranker = Reranker(one_object_slow, cache_mb=16)
    colour_token = 2  # "a " then the colour's first letter: the token that needs to see the object
    for colour, shape in (("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle")):
        hits = []
        for side, x in (("left", 0.25), ("right", 0.75)):
            path = tmp_path / f"{colour}-{side}.png"
            _scene(colour, shape, x, 0.5).save(path)
            hits.append({"id": path.stem, "media": "image", "uri": str(path)})
        left, right = reranker.explain(f"a {colour} {shape}", hits)
        assert _centre_x(left, colour_token) < 0.4 and _centre_x(right, colour_token) > 0.6, \
            (colour, _centre_x(left, colour_token), _centre_x(right, colour_token))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert reranker.explain("a red circle", [{"id": "b", "media": "image", "uri": str(broken)}]) == [None]
