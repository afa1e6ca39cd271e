"""The YAML config system with command-line overrides."""

import pytest

from fastslow.data.source import DataConfig
from fastslow.config import FastRunConfig, apply_override, dump_config, load_config
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


def test_every_example_config_loads():
    """The configs in configs/ are what users copy: each must load into its run config (no unknown keys)."""
    import glob
    import os

    from fastslow.config import DistillRunConfig, IndexRunConfig, SlowRunConfig

    kinds = {"fast": FastRunConfig, "slow": SlowRunConfig, "distill": DistillRunConfig, "index": IndexRunConfig}
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    paths = sorted(glob.glob(os.path.join(root, "*.yaml")))
    assert len(paths) >= 8
    for path in paths:
        kind = os.path.basename(path).split("_")[0]
        if kind == "demo.yaml":
            _check_demo_config(kinds)
            continue
        if kind == "serve":
            _check_serve_config(path)
            continue
        if kind == "synth.yaml":
            _check_synth_sizes()
            continue
        cfg = load_config(kinds[kind], path)
        assert cfg.data.path, path
        if kind != "index":
            assert cfg.job.num_workers >= 1


def _check_synth_sizes() -> None:
    from fastslow.synth import synth_config, synth_sizes

    assert {"tiny", "quick", "full"} <= set(synth_sizes())
    for size in synth_sizes():
        assert synth_config(size, seed=0).n_test > 0, size


def _check_demo_config(kinds: dict) -> None:
    """Every size of configs/demo.yaml names configs that load with its overrides."""
    import yaml

    from apps.demo import CONFIGS, DEMO_CONFIG, load_plan
    from fastslow.synth import synth_config

    for size in yaml.safe_load(DEMO_CONFIG.read_text()):
        plan = load_plan(size)
        synth_config(plan.synth["size"], 0, plan.synth.get("overrides", []))
        for kind in ("fast", "slow", "distill", "index"):
            step = getattr(plan, kind)
            load_config(kinds[kind], str(CONFIGS / step["config"]), step.get("overrides", []))
        _check_serve_config(str(CONFIGS / plan.serve))


def _check_serve_config(path: str) -> None:
    """A Serve config: valid for Serve's own schema, its app's args valid for ServeAppConfig, on loopback."""
    from ray.serve.schema import ServeDeploySchema

    from serve_app.config import app_config
    from serve_app.launch import load_serve_config

    raw = load_serve_config(path)
    schema = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(raw)
    assert schema.http_options.host == "127.0.0.1", path
    (app,) = [a for a in raw["applications"] if a["name"] == "fastslow"]
    assert app["import_path"] == "serve_app.ingress:build_app"
    cfg = app_config(app["args"])
    assert cfg.index_root and cfg.fast_checkpoint and cfg.limits.max_k >= 1
    names = {d["name"] for d in app["deployments"]}
    assert {"Ingress", "SlowReranker"} <= names, names
