"""The re-ranker's item cache: bounded by the bytes of the cached features (cache_mb), least recently used out first;
items decoded at the Slow model's size and fit."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from media_fixtures import make_image_bytes, write_file

from fastslow.errors import FastslowError
from fastslow.search.reranker import ItemFeatures, tensor_bytes

WIDTH = 256  # features per item: float16 (a frozen tower's cache), 512 bytes an item


class FakeSlow:
    """Just what ItemFeatures uses of a Slow model: its vision settings and visual_features."""

    def __init__(self, crop=None):
        vision = SimpleNamespace(image_size=8, trainable=False, **({} if crop is None else {"crop": crop}))
        self.config = SimpleNamespace(vision=vision)
        self.seen: list[int] = []  # items per visual_features call

    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(pixels))
        return pixels.float().mean(dim=(1, 2, 3))[:, None].repeat(1, WIDTH)


@pytest.fixture
def hits(tmp_path):
    """Eight image hits, each a different colour."""
    out = []
    for i in range(8):
        path = write_file(tmp_path / f"{i}.png", make_image_bytes(12, 10, (20 * i, 10, 200 - 20 * i), "PNG"))
        out.append({"id": str(i), "media": "image", "uri": path})
    return out


def _cached(features: ItemFeatures) -> list[str]:
    return [key[1].rsplit("/", 1)[-1].split(".")[0] for key in features.cache]


def test_cache_holds_at_most_its_budget_and_evicts_the_least_recently_used(hits):
    model = FakeSlow()
    item = WIDTH * 2  # bytes of one item's float16 features
    features = ItemFeatures(model, num_frames=2, cache_mb=4 * item / 2**20)  # room for 4 items
    assert features.budget == 4 * item
    first, errors = features.get(hits[:3])
    assert first.shape == (3, WIDTH) and first.dtype == torch.float16 and errors == ["", "", ""]
    assert _cached(features) == ["0", "1", "2"] and features.cached_bytes == 3 * item
    again, _ = features.get([hits[0]])  # from the cache, and now the most recently used
    assert model.seen == [3] and torch.equal(again[0], first[0])
    features.get(hits[3:6])  # 3 new items: 1 and 2 (least recently used) go, 0 stays
    assert _cached(features) == ["0", "3", "4", "5"]
    assert features.cached_bytes == sum(tensor_bytes(f) for f in features.cache.values()) == 4 * item
    for f in features.cache.values():  # each its own storage: evicting one frees its bytes
        assert f.untyped_storage().nbytes() == tensor_bytes(f)
    got, _ = features.get([hits[1], hits[0], hits[6]])  # 1 decoded again; the answer in the order asked
    assert model.seen == [3, 3, 2]
    assert torch.equal(got[0], first[1]) and torch.equal(got[1], first[0])
    assert _cached(features) == ["5", "0", "1", "6"] and features.cached_bytes <= features.budget


def test_a_zero_budget_caches_nothing_but_answers(hits):
    features = ItemFeatures(FakeSlow(), cache_mb=0)
    got, errors = features.get(hits[:2])
    assert got.shape == (2, WIDTH) and errors == ["", ""]
    assert not features.cache and features.cached_bytes == 0
    with pytest.raises(FastslowError, match="cache_mb"):
        ItemFeatures(FakeSlow(), cache_mb=-1)


def test_items_are_decoded_at_the_models_fit(hits):
    assert ItemFeatures(FakeSlow()).decode.fit == "crop"  # fastslow's own Slow: no crop setting
    assert ItemFeatures(FakeSlow(crop=[])).decode.fit == "squash"  # BLIP: its processor squashes
    assert ItemFeatures(FakeSlow(crop=[8, 8])).decode.fit == "crop"


def test_serve_setting_is_cache_mb():
    from serve_app.config import app_config

    cfg = app_config({"index_root": "i", "fast_checkpoint": "f", "cache_mb": 64})
    assert cfg.cache_mb == 64.0
    with pytest.raises(FastslowError, match="cache_mb"):
        app_config({"index_root": "i", "fast_checkpoint": "f", "cache_mb": -1})
    with pytest.raises(FastslowError):
        app_config({"index_root": "i", "fast_checkpoint": "f", "cache_items": 100})  # the old name is refused
