"""A training run repeats exactly: the seed sets the model's initial weights as well as the batches."""

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from fastslow.config import FastRunConfig, load_config
from fastslow.train.run import run_training
from helpers import CONFIGS, TINY


def test_a_run_with_the_same_seed_repeats_the_cli_run_exactly(tiny_corpus, tiny_fast_checkpoint, tmp_path):
    """The session's tiny Fast (trained by `fastslow train fast`), trained again in this process: same history, same
    weights. Before the seed set the initial weights, the first step's loss already differed between runs."""
    first = Path(tiny_fast_checkpoint).parent
    cfg = load_config(FastRunConfig, os.path.join(CONFIGS, TINY.fast["config"]),
                      [*TINY.fast["overrides"], f'data.path="{os.path.join(tiny_corpus, "images")}"',
                       f'out="{tmp_path}"'])
    run_training("fast", cfg, progress=False)
    losses = [[r["loss"] for r in json.loads((d / "history.json").read_text())] for d in (first, tmp_path)]
    assert len(losses[0]) > 1 and losses[0] == losses[1]
    weights = [load_file(d / "checkpoint" / "model.safetensors") for d in (first, tmp_path)]
    assert set(weights[0]) == set(weights[1])
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
