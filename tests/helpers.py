"""Helpers several test modules share (not a test module): the tiny model settings, read from the demo's own
config (configs/demo.yaml, `tiny:`), and the Ray job helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def tiny_plan():
    """The demo's `tiny` size (configs/demo.yaml), read by the demo's own loader: what the tests' tiny corpus and
    tiny models are made with."""
    from apps.demo import load_plan

    return load_plan("tiny")


def _model_overrides(step: dict) -> list[str]:
    return [o for o in step["overrides"] if o.startswith("model.")]


TINY = tiny_plan()
# The tiny models' settings alone (no train.*): KEY=VALUE overrides for tests that choose their own schedule.
TINY_FAST = _model_overrides(TINY.fast)
TINY_SLOW = _model_overrides(TINY.slow)


def tiny_train_args(model: str) -> list[str]:
    """`fastslow train fast|slow` arguments of the demo's tiny model, config file and overrides, as the demo runs it."""
    step = {"fast": TINY.fast, "slow": TINY.slow}[model]
    return ["--config", os.path.join(CONFIGS, step["config"]), *step["overrides"]]


def fastslow_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m fastslow ARGS --no-progress`; raises with its stderr when it fails."""
    proc = subprocess.run([sys.executable, "-m", "fastslow", *args, "--no-progress"], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"fastslow {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


# In-process tiny models (no CLI): the demo's tiny towers, narrower still for unit tests.
def tiny_config(vision_trainable=True, text_trainable=True, head_hidden=16):
    """A tiny Fast config: the kinds and image size of the demo's tiny Fast, narrower towers, embed_dim 8."""
    from fastslow.config import FastRunConfig, load_config

    model = load_config(FastRunConfig, None, TINY_FAST).model
    from fastslow.models import FastConfig, TextTowerConfig, VisionTowerConfig

    return FastConfig(
        vision=VisionTowerConfig(kind=model.vision.kind, image_size=model.vision.image_size, width=8, depth=2,
                                 trainable=vision_trainable),
        text=TextTowerConfig(kind=model.text.kind, max_length=16, width=16, depth=1, heads=2,
                             trainable=text_trainable),
        embed_dim=8,
        head_hidden=head_hidden,
    )


def tiny_slow(trainable: bool = True, image_size: int = 32, **overrides):
    """A tiny Slow config: the kinds and sizes of the demo's tiny Slow (dim, heads, ffn), two layers."""
    from fastslow.config import SlowRunConfig, load_config
    from fastslow.models import SlowConfig, TextTowerConfig, VisionTowerConfig

    model = load_config(SlowRunConfig, None, TINY_SLOW).model
    fields = dict(
        vision=VisionTowerConfig(kind=model.vision.kind, image_size=image_size, width=8, depth=2, trainable=trainable),
        text=TextTowerConfig(kind=model.text.kind, max_length=16),
        dim=model.dim, layers=2, heads=model.heads, ffn=model.ffn, dropout=0.0, video_grid=2, max_frames=4,
        max_length=48,
    )
    return SlowConfig(**(fields | overrides))


# Ray jobs.
def job_id(name: str) -> str:
    """A unique submission id starting with `name`."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def job_status(client, job_id: str) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    return str(client.get_job_status(job_id)).rpartition(".")[2]


def job_summary(logs: str) -> dict:
    """The JSON summary a job prints last."""
    return json.loads(logs[logs.rindex("{\n"):])


def wait_for(client, job_id: str, timeout: float = 400, until_log: str | None = None) -> tuple[str, str]:
    """Poll a job until it ends (or, with `until_log`, until that text is in its logs); (status, logs)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = job_status(client, job_id)
        logs = client.get_job_logs(job_id)
        if until_log is not None and until_log in logs:
            return status, logs
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status, logs
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s:\n{client.get_job_logs(job_id)[-3000:]}")


def build(submit_job, job, collection, checkpoint, root, *extra, runtime_env=None):
    """Submit the index job of `collection` in 3 shards, partitions of 4 items (9 partitions for mixed_collection)."""
    return submit_job(job, "jobs.build_index", "--data", collection, "--checkpoint", checkpoint, "--root", root,
                      "index.shards=3", "embed.partition_size=4", "data.num_frames=4", *extra, runtime_env=runtime_env)
