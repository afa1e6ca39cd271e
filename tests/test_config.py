"""The YAML config system with command-line overrides."""

import pytest

from fastslow.config import DataConfig, FastRunConfig, apply_override, dump_config, load_config
from fastslow.errors import FastslowError


def test_yaml_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  vision: {kind: tiny_cnn}\n  embed_dim: 64\ntrain:\n  epochs: 3\n")
    cfg = load_config(FastRunConfig, str(path), ["train.epochs=7", "data.path=/x/y", "model.text.kind=tiny_transformer"])
    assert cfg.model.vision.kind == "tiny_cnn" and cfg.model.embed_dim == 64
    assert cfg.train.epochs == 7 and cfg.data.path == "/x/y" and cfg.model.text.kind == "tiny_transformer"
    assert isinstance(cfg.data, DataConfig)
    # What a run saves reloads to the same config.
    saved = tmp_path / "saved.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(FastRunConfig, str(saved)) == cfg


def test_unknown_key_is_refused_with_its_name():
    with pytest.raises(FastslowError, match="epochz"):
        load_config(FastRunConfig, None, ["train.epochz=3"])


def test_bad_override_and_bad_yaml(tmp_path):
    with pytest.raises(FastslowError, match="key=value"):
        apply_override({}, "train.epochs")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(FastslowError, match="bad.yaml"):
        load_config(FastRunConfig, str(bad))
    with pytest.raises(FastslowError, match="no such file"):
        load_config(FastRunConfig, str(tmp_path / "missing.yaml"))
