"""Helpers several test modules share (not a test module): the tiny model settings, read from the demo's own
config (configs/demo.yaml, `tiny:`), and the Ray job helpers."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from fastslow.config import IndexRunConfig, load_config
from fastslow.index.publish import load_version

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


def quick_benchmark(module: str, tmp_path, timeout: float = 540) -> tuple[dict, Path]:
    """`python -m benchmarks.MODULE --quick` on 2 CPUs with its data and work under `tmp_path`; (its JSON, the
    JSON's path: the .md and .png lie beside it). Raises with its stderr when it fails."""
    out = Path(tmp_path) / f"{module}.json"
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--out", str(out), "--quick", "--data",
                           str(Path(tmp_path) / "data"), "--work", str(Path(tmp_path) / "work"), "--cpus", "2"],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"benchmarks.{module} --quick failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text()), out


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
    """The JSON summary a job prints last (Ray's own lines may follow it in the job's log: the autoscaler's
    events reach every connected driver)."""
    return json.JSONDecoder().raw_decode(logs[logs.rindex("{\n"):])[0]


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


# The index tests' settings: 3 shards, partitions of 4 items (9 partitions for mixed_collection), 4 frames a video.
INDEX_SETTINGS = ["index.shards=3", "embed.partition_size=4", "data.num_frames=4"]


def build(submit_job, job, collection, checkpoint, root, *extra, runtime_env=None):
    """Submit the index job of `collection` with INDEX_SETTINGS."""
    return submit_job(job, "jobs.build_index", "--data", collection, "--checkpoint", checkpoint, "--root", root,
                      *INDEX_SETTINGS, *extra, runtime_env=runtime_env)


def built_by_job(submit_job, name: str, collection: str, checkpoint: str, root: str) -> tuple[str, dict]:
    """`build`, waited for; (its logs, its summary). Fails the test when the job does not succeed."""
    job = job_id(name)
    status, logs = wait_for(build(submit_job, job, collection, checkpoint, root), job)
    assert status == "SUCCEEDED", logs[-4000:]
    return logs, job_summary(logs)


# ---- index builds: the settings the Ray job's and the local pipeline's tests share ----


def index_overrides(collection: str, checkpoint: str, root: str) -> list[str]:
    """The settings of tests/test_jobs_index.py's `build` and tests/test_index_build.py: the same input gives the same version."""
    return [f"data.path={json.dumps(collection)}", f"checkpoint={json.dumps(checkpoint)}", f"root={json.dumps(root)}",
            *INDEX_SETTINGS]


def index_config(collection: str, checkpoint: str, root: str) -> IndexRunConfig:
    return load_config(IndexRunConfig, None, index_overrides(collection, checkpoint, root))


def index_vectors(root: str) -> tuple[list[str], np.ndarray]:
    """The live version's ids (global row order) and their vectors."""
    loaded = load_version(root)
    ids = loaded.metadata.column("id").to_pylist()
    vectors = np.zeros((len(ids), loaded.dim), np.float32)
    for ix, rows in zip(loaded.indexes, loaded.rows):
        vectors[rows] = ix.reconstruct_n(0, ix.ntotal)
    return ids, vectors


def job_submitter(ray_head: str, repo: str = REPO):
    """(submit, stop_all): `submit(job_id, module, *args, runtime_env=JSON)` runs `ray job submit --no-wait` of
    `python -m module` and returns the job SDK client to wait on it; `stop_all()` stops every job it submitted."""
    from ray.job_submission import JobSubmissionClient

    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    client = JobSubmissionClient(ray_head)
    submitted = []

    def submit(job_id: str, module: str, *args: str, runtime_env: str | None = None) -> JobSubmissionClient:
        extra = ["--runtime-env-json", runtime_env] if runtime_env else []
        cmd = [ray, "job", "submit", "--address", ray_head, "--working-dir", repo, "--submission-id", job_id, *extra,
               "--no-wait", "--", sys.executable, "-m", module, *args]
        deadline = time.time() + 60
        while True:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            # A head that has just started may not have registered its job agent yet ("try again later").
            if proc.returncode == 0 or "No available agent" not in proc.stderr or time.time() > deadline:
                break
            time.sleep(2)
        if proc.returncode != 0:
            raise AssertionError(f"ray job submit {module} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        submitted.append(job_id)
        return client

    def stop_all() -> None:
        for job_id in submitted:
            try:
                client.stop_job(job_id)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass

    return submit, stop_all


def search_all(indexes: list, rows: list[np.ndarray], queries: np.ndarray, k: int, metric: str,
               nprobe: int | None = None, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every shard searched (with per-call parameters) and merged: (scores, global rows), (Q, k); the reference
    the index tests compare against."""
    from fastslow.index.shards import merge_results, search_params, search_shard

    parts = [search_shard(ix, r, queries, k, search_params(ix, nprobe, ef_search)) for ix, r in zip(indexes, rows)]
    return merge_results(parts, k, metric)


def stop_ray_node(leader: subprocess.Popen, temp_dir: str) -> None:
    """Stop exactly the processes this node started: its process group (the `ray start --block` leader's), then
    any process of ours still naming its temp dir. Never `ray stop` (it stops every Ray on the machine)."""
    try:
        os.killpg(leader.pid, signal.SIGTERM)
        leader.wait(timeout=3)  # a test cluster keeps nothing worth a graceful stop: SIGKILL soon after
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(leader.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    leader.wait(timeout=30)
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                named = temp_dir.encode() in f.read()
            if named and os.stat(cmdline).st_uid == os.getuid():
                os.kill(int(cmdline.split("/")[2]), signal.SIGKILL)
        except OSError:
            pass


def wait_for_dashboard(dashboard: str, leader: subprocess.Popen, log_path: str, timeout: float = 120) -> None:
    """Wait until a `ray start --head --block` node's dashboard answers; fail with its log if it exits first."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if leader.poll() is not None:
            raise AssertionError(f"ray start exited ({leader.returncode}):\n{open(log_path).read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the dashboard at {dashboard} did not answer in {timeout:.0f} s")
        try:
            with urllib.request.urlopen(f"{dashboard}/api/version", timeout=2):
                return
        except OSError:
            time.sleep(0.5)


def start_ray_head(temp_dir: str, object_store_bytes: int, env: dict | None = None,
                   num_cpus: int = 2) -> tuple[subprocess.Popen, str, str]:
    """`ray start --head --block` on 127.0.0.1, in a session of its own (stop it with `stop_ray_node`), with every
    port its own so other clusters on this machine can run beside it; (the leader process, the dashboard URL, the
    GCS address) once the dashboard answers. Its log: `temp_dir`/ray_start.log."""
    from cluster.connect import free_port

    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    dashboard_port, gcs_port = free_port(), free_port()
    os.makedirs(temp_dir, exist_ok=True)
    log_path = os.path.join(temp_dir, "ray_start.log")
    with open(log_path, "w") as log:
        leader = subprocess.Popen(
            [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
             f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_bytes}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
             f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
             f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for_dashboard(dashboard, leader, log_path)
    except BaseException:
        stop_ray_node(leader, temp_dir)
        raise
    return leader, dashboard, f"127.0.0.1:{gcs_port}"
