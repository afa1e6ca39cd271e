"""Test session setup: no network but localhost, fake AWS credentials, and a local moto S3 server."""

from __future__ import annotations

import os
import uuid

import pytest

# Set at import, for the whole session: nothing may reach the network or a real AWS account.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "http_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "127.0.0.1,localhost,::1",
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "HF_HUB_OFFLINE": "1",
    }
)
os.environ.pop("AWS_SESSION_TOKEN", None)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("FASTSLOW_S3_ENDPOINT", None)


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server on 127.0.0.1 for the session; AWS_ENDPOINT_URL points at it while it runs."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    old = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        if old is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = old
        server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint):
    """`s3://<name>` of a fresh, empty bucket on the moto server."""
    from fastslow import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from cluster.connect import free_port  # noqa: E402 - after the environment above is set


class RayHead(str):
    """The dashboard URL of a test cluster (for `ray job submit --address`), with `.gcs`: its address for ray.init."""

    gcs: str


@pytest.fixture(scope="session")
def ray_head():
    """A local Ray cluster started the way users start one (`ray start --head` on 127.0.0.1); yields its
    dashboard URL for `ray job submit --address` (`.gcs`: the address `--address` of the CLI and ray.init take).
    Stopped at the end of the session."""
    import subprocess
    import sys
    import tempfile

    from fastslow.env import apply_local_safety_env

    apply_local_safety_env()
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    dashboard_port, gcs_port = free_port(), free_port()
    # Ray's socket paths must stay short: a temp dir directly under /tmp.
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
                    "--num-cpus=2", "--object-store-memory=400000000", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    head = RayHead(f"http://127.0.0.1:{dashboard_port}")
    head.gcs = f"127.0.0.1:{gcs_port}"
    try:
        yield head
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)


def _job_submitter(ray_head):
    """(submit, stop_all): `submit(job_id, module, *args, runtime_env=JSON)` runs `ray job submit --no-wait` of
    `python -m module` and returns the job SDK client to wait on it; `stop_all()` stops every job it submitted."""
    import subprocess
    import sys

    from ray.job_submission import JobSubmissionClient

    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    client = JobSubmissionClient(ray_head)
    submitted = []

    def submit(job_id: str, module: str, *args: str, runtime_env: str | None = None) -> JobSubmissionClient:
        extra = ["--runtime-env-json", runtime_env] if runtime_env else []
        subprocess.run([ray, "job", "submit", "--address", ray_head, "--working-dir", REPO, "--submission-id",
                        job_id, *extra, "--no-wait", "--", sys.executable, "-m", module, *args],
                       check=True, capture_output=True, timeout=120)
        submitted.append(job_id)
        return client

    def stop_all() -> None:
        for job_id in submitted:
            try:
                client.stop_job(job_id)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass

    return submit, stop_all


@pytest.fixture
def submit_job(ray_head):
    """`submit_job(job_id, module, *args, runtime_env=JSON)`: see `_job_submitter`. Jobs stop at the end of the test."""
    submit, stop_all = _job_submitter(ray_head)
    yield submit
    stop_all()


@pytest.fixture(scope="module")
def submit_module_job(ray_head):
    """`submit_job` for module-scoped fixtures: jobs stop at the end of the module."""
    submit, stop_all = _job_submitter(ray_head)
    yield submit
    stop_all()


@pytest.fixture(scope="session")
def mixed_collection(tmp_path_factory):
    """A bare folder to index: 24 images and 4 videos, plus a corrupt jpg, a truncated mp4, a pdf and a sidecar
    caption: 31 items read, 28 indexable."""
    from media_fixtures import make_jpeg_bytes, make_mp4_bytes, random_bytes, write_file

    root = tmp_path_factory.mktemp("collection")
    for i in range(24):  # every photo its own colour: no two items tie
        write_file(root / f"photos/p{i:02d}.jpg", make_jpeg_bytes(40 + i, 32, (10 * i, 250 - 10 * i, 37 * i % 256)))
    write_file(root / "photos/p00.txt", b"a red photo")
    for i in range(4):
        write_file(root / f"clips/c{i}.mp4", make_mp4_bytes(num_frames=8 + i))
    write_file(root / "photos/broken.jpg", random_bytes(500))
    write_file(root / "clips/truncated.mp4", make_mp4_bytes(num_frames=12)[:300])
    write_file(root / "notes.pdf", b"%PDF-1.4")
    return str(root)


@pytest.fixture(scope="session")
def tiny_fast_checkpoint(tmp_path_factory):
    """A tiny Fast model's checkpoint (trained one epoch on the tiny synthetic images by the CLI)."""
    import subprocess
    import sys

    from test_jobs_training import TINY_FAST

    out = tmp_path_factory.mktemp("fastckpt")
    data = out / "synth"
    subprocess.run([sys.executable, "-m", "fastslow", "synth", "--out", str(data), "--size", "tiny", "--no-progress"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "fastslow", "train", "fast", "--data", str(data / "images"), "--out",
                    str(out / "run"), *TINY_FAST, "train.epochs=1", "train.batch_size=8", "--no-progress"],
                   check=True, capture_output=True, timeout=300)
    return str(out / "run" / "checkpoint")


FAULT_LOG_ENV = "FASTSLOW_FAULT_LOG"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item: `fault_record` writes whether the test passed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def fault_record(request):
    """`record(kind, name, **figures)`: a row of the fault table (kind "fault" or "input"), tagged with this test
    and, at its end, whether it passed ("survived"). Appended as JSON lines to $FASTSLOW_FAULT_LOG when set
    (benchmarks/faults.py sets it); the test's asserts are what make a row true."""
    import json

    rows = []

    def record(kind: str, name: str, **figures) -> None:
        rows.append({"kind": kind, "name": name, **figures})

    yield record
    path = os.environ.get(FAULT_LOG_ENV)
    report = getattr(request.node, "report_call", None)
    if path and rows:
        with open(path, "a") as f:
            for row in rows:
                f.write(json.dumps({"test": request.node.nodeid, "passed": bool(report and report.passed), **row},
                                   default=str) + "\n")
