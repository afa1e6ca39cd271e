"""Model configs: dict round trips and clear errors for unknown keys, wrong types and bad values."""

from dataclasses import dataclass

import pytest

from fastslow.errors import FastslowError
from fastslow.models.config import (
    FastConfig,
    TextTowerConfig,
    VisionTowerConfig,
    config_from_dict,
    config_to_dict,
    dataclass_from_dict,
)


def test_round_trip_nested():
    cfg = FastConfig(
        vision=VisionTowerConfig(kind="tiny_cnn", image_size=32, width=8),
        text=TextTowerConfig(kind="tiny_transformer", width=16, trainable=True),
        embed_dim=8,
        head_hidden=0,
    )
    d = config_to_dict(cfg)
    assert d["vision"]["kind"] == "tiny_cnn" and d["text"]["trainable"] is True
    assert config_from_dict(FastConfig, d) == cfg


def test_partial_dict_uses_defaults_and_int_becomes_float():
    cfg = config_from_dict(FastConfig, {"vision": {"image_size": 96}, "init_temperature": 1})
    assert cfg.vision.image_size == 96 and cfg.vision.kind == "efficientnet_lite0"
    assert cfg.text == TextTowerConfig()
    assert isinstance(cfg.init_temperature, float)


def test_unknown_nested_key_is_named():
    with pytest.raises(FastslowError, match=r"model\.vision: unknown key\(s\) colour"):
        dataclass_from_dict(FastConfig, {"vision": {"colour": 1}}, where="model")


def test_wrong_type_is_named():
    with pytest.raises(FastslowError, match=r"config\.embed_dim: expected int, got str"):
        dataclass_from_dict(FastConfig, {"embed_dim": "256"})
    with pytest.raises(FastslowError, match=r"config\.text\.max_length: expected int, got bool"):
        dataclass_from_dict(FastConfig, {"text": {"max_length": True}})


def test_bad_values():
    with pytest.raises(FastslowError, match="vision.kind"):
        dataclass_from_dict(FastConfig, {"vision": {"kind": "resnet9000"}})
    with pytest.raises(FastslowError, match="name_or_path"):
        TextTowerConfig(kind="hf")
    with pytest.raises(FastslowError, match="video_pooling"):
        FastConfig(video_pooling="median")
    with pytest.raises(FastslowError, match="embed_dim"):
        FastConfig(embed_dim=0)


def test_missing_required_and_not_a_mapping():
    @dataclass
    class Needs:
        x: int

    with pytest.raises(FastslowError, match="missing required key x"):
        dataclass_from_dict(Needs, {})
    with pytest.raises(FastslowError, match="expected a mapping"):
        dataclass_from_dict(FastConfig, [1, 2])
