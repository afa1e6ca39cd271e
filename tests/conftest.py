"""Test session setup: no network but localhost, fake AWS credentials, and a local moto S3 server; the fixtures
the test modules share, built once per run (the tiny corpus, the tiny Fast and Slow checkpoints, a Ray cluster,
the Serve apps); the `integration` marker (the tier that needs Ray, Serve, the demo or a browser)."""

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


from helpers import job_submitter, start_ray_head, stop_ray_node  # noqa: E402 - after the environment above is set


class RayHead(str):
    """The dashboard URL of a test cluster (for `ray job submit --address`), with `.gcs`: its address for ray.init,
    and `.temp_dir`: its --temp-dir (session_latest/ holds its logs and its Prometheus targets)."""

    gcs: str
    temp_dir: str


@pytest.fixture(scope="session")
def ray_head():
    """A local Ray cluster started the way users start one (`ray start --head` on 127.0.0.1); yields its
    dashboard URL for `ray job submit --address` (`.gcs`: the address `--address` of the CLI and ray.init take).
    Stopped at the end of the session."""
    import tempfile

    from fastslow.env import apply_local_safety_env

    apply_local_safety_env()
    # Ray's socket paths must stay short: a temp dir directly under /tmp. Stopped by killing its process group,
    # never `ray stop` (which stops every Ray on the machine).
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    leader, dashboard, gcs = start_ray_head(temp_dir, object_store_bytes=400_000_000)
    head = RayHead(dashboard)
    head.gcs, head.temp_dir = gcs, temp_dir
    try:
        yield head
    finally:
        stop_ray_node(leader, temp_dir)


@pytest.fixture
def submit_job(ray_head):
    """`submit_job(job_id, module, *args, runtime_env=JSON)`: see `helpers.job_submitter`. Jobs stop at the end of the test."""
    submit, stop_all = job_submitter(ray_head)
    yield submit
    stop_all()


@pytest.fixture(scope="module")
def submit_module_job(ray_head):
    """`submit_job` for module-scoped fixtures: jobs stop at the end of the module."""
    submit, stop_all = job_submitter(ray_head)
    yield submit
    stop_all()


@pytest.fixture(scope="session")
def mixed_collection(tmp_path_factory):
    """A bare folder to index: 24 images and 4 videos, plus a corrupt jpg, a truncated mp4, a pdf and a sidecar
    caption: 31 items read, 28 indexable."""
    from media_fixtures import write_mixed_collection

    return write_mixed_collection(tmp_path_factory.mktemp("collection"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> str:
    """The tiny synthetic set, made once per run by the CLI (`fastslow synth --size tiny`): images/ (40 train, 10
    val, 20 test) and videos/. Shared: copy it before changing anything in it."""
    from helpers import fastslow_cli

    out = tmp_path_factory.mktemp("tiny_corpus")
    fastslow_cli("synth", "--out", str(out), "--size", "tiny")
    return str(out)


@pytest.fixture(scope="session")
def tiny_fast_checkpoint(tiny_corpus, tmp_path_factory) -> str:
    """The demo's tiny Fast (configs/demo.yaml `tiny:`), trained once per run by the CLI on the tiny images."""
    from helpers import fastslow_cli, tiny_train_args

    out = tmp_path_factory.mktemp("tiny_fast")
    fastslow_cli("train", "fast", "--data", os.path.join(tiny_corpus, "images"), "--out", str(out),
                 *tiny_train_args("fast"))
    return str(out / "checkpoint")


@pytest.fixture(scope="session")
def tiny_slow_checkpoint(tiny_corpus, tmp_path_factory) -> str:
    """The demo's tiny Slow (configs/demo.yaml `tiny:`), trained once per run by the CLI on the tiny images."""
    from helpers import fastslow_cli, tiny_train_args

    out = tmp_path_factory.mktemp("tiny_slow")
    fastslow_cli("train", "slow", "--data", os.path.join(tiny_corpus, "images"), "--out", str(out),
                 *tiny_train_args("slow"))
    return str(out / "checkpoint")


@pytest.fixture(scope="session")
def serve_stack(ray_head, tiny_corpus, tiny_fast_checkpoint, tiny_slow_checkpoint, tmp_path_factory):
    """What the Serve tests deploy: the tiny checkpoints and two index versions of a copy of the tiny images (one id
    with a '/', one symlink out of the collection) built by `ray job submit` of the index job:
    {'fast', 'slow', 'root', 'v1' (all 70 items), 'v2' (test 20), 'images', 'slash_id', 'symlink_id', 'wide_ids' (5
    test images twice as wide as the others)}."""
    import shutil

    from helpers import job_id, job_summary, wait_for
    from serve_helpers import odd_media, widen

    out = tmp_path_factory.mktemp("serve")
    images = out / "images"
    shutil.copytree(os.path.join(tiny_corpus, "images"), images)
    slash_id, symlink_id = odd_media(images, out / "outside")
    wide_ids = widen(images, 5)
    root, versions = str(out / "index"), []
    submit, stop_all = job_submitter(ray_head)
    try:
        for extra in ([], ["split=test"]):
            job = job_id("serve-index")
            client = submit(job, "jobs.build_index", "--data", str(images), "--checkpoint", tiny_fast_checkpoint,
                            "--root", root, "index.shards=2", *extra)
            status, logs = wait_for(client, job)
            assert status == "SUCCEEDED", logs[-3000:]
            versions.append(job_summary(logs)["version"])
    finally:
        stop_all()
    return {"fast": tiny_fast_checkpoint, "slow": tiny_slow_checkpoint, "root": root, "v1": versions[0],
            "v2": versions[1], "images": str(images), "slash_id": slash_id, "symlink_id": symlink_id,
            "wide_ids": wide_ids}


def pytest_runtest_teardown(item, nextitem):
    """Serve is shut down once the next test does not use the app that is up (see serve_helpers.serve)."""
    import sys

    if "serve_helpers" not in sys.modules:  # no app was deployed
        return
    from serve_helpers import SERVING, serve_shutdown

    if SERVING["name"] is not None and (nextitem is None or SERVING["name"] not in nextitem.fixturenames):
        serve_shutdown()


@pytest.fixture
def no_serve(ray_head, request):
    """Serve down on the session's head before and after the test: for a test that deploys an app itself (through
    the CLI), as another test's app would keep its own port."""
    from serve_helpers import SERVING, serve_shutdown

    SERVING.update(name=request.module.__name__, head=ray_head)
    serve_shutdown()
    yield
    SERVING.update(name=request.module.__name__, head=ray_head)
    serve_shutdown()


@pytest.fixture(scope="session")
def _app_config(serve_stack) -> dict:
    from serve_helpers import serve_config

    return serve_config(serve_stack, deployments={"Ingress": {"user_config": {"index_version": serve_stack["v1"]}}})


@pytest.fixture
def app(_app_config, serve_stack, ray_head):
    """The app deployed from the repository's Serve YAML (paths and port filled in), serving version v1:
    {'url', 'redeploy', **serve_stack}. A test that redeploys puts v1 and no fault back before it ends."""
    from serve_app.launch import deploy, with_settings
    from serve_helpers import serve

    def redeploy(version=None, fault=None):
        """Deploy again with another index version and/or re-ranker fault (Serve calls reconfigure())."""
        changed = with_settings(_app_config, deployments={
            "Ingress": {"user_config": {"index_version": version or serve_stack["v1"]}},
            "SlowReranker": {"user_config": {"fault": fault}}})
        deploy(changed, ray_head)

    url = serve("app", _app_config, ray_head, serve_stack["v1"])
    return {"url": url, "redeploy": redeploy, **serve_stack}


@pytest.fixture(scope="session")
def _guarded_config(serve_stack) -> dict:
    import json

    from serve_helpers import KEY, serve_config

    ingress = {"user_config": {"index_version": serve_stack["v1"]}, "max_ongoing_requests": 4,
               "max_queued_requests": 4, "backpressure_config": {"retry_after_s": 1}}
    config = serve_config(serve_stack, deployments={"Ingress": ingress}, env={"FASTSLOW_API_KEY": KEY})
    args = config["applications"][0]["args"]
    args["limits"] = {**args["limits"], "max_image_bytes": 3000}  # a small room for images: bodies over 20,384 B
    assert KEY not in json.dumps(args)
    return config


@pytest.fixture
def guarded(_guarded_config, serve_stack, ray_head):
    """The app with an API key (serve_helpers.KEY, in the replicas' environment only) and a small ingress queue,
    serving v1: {'url', **serve_stack}. /readyz is open (load balancers probe it)."""
    from serve_helpers import serve

    url = serve("guarded", _guarded_config, ray_head, serve_stack["v1"])
    return {"url": url, **serve_stack}


# The integration tier: tests that need a Ray cluster, Serve, a Ray job, the demo or a browser, i.e. every test that
# uses one of these fixtures, directly or through another fixture (the Serve apps and the browser tests stand on
# `ray_head`; `demo` and `s3_pipeline` start Ray and Serve through the CLI), and the tests that run an entry point
# (the `fastslow` command, a benchmark) in a process of their own, marked where they are. The fast tier is
# everything else, unit and in-process tests: `pytest -m "not integration"`.
INTEGRATION_FIXTURES = {"ray_head", "submit_job", "submit_module_job", "demo", "s3_pipeline"}


def pytest_itemcollected(item):
    if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.integration)


# Two test processes (pytest-xdist, `-n 2` in pyproject's addopts), each with its own session fixtures (its own Ray
# head, moto server and tiny models), are handed whole modules, so a module's fixtures are built once. Modules that
# share an expensive fixture or must not overlap go together as one unit (SCHEDULED_TOGETHER), and the units start
# heaviest first (by their share of the suite's time in CI), so that no long unit starts last.
# xdist's `--dist loadgroup` would do the grouping with xdist_group marks, but with pytest 9.2 it never groups
# (it renames items through an attribute pytest no longer reads), so the scheduler below does it by module name.
SCHEDULED_TOGETHER = {
    # Both start a local Ray and Serve through the CLI (`fastslow demo`, `fastslow serve`): one at a time.
    "local-ray": ("test_demo", "test_s3_pipeline"),
    # The Serve apps of the session's serve_stack (two index versions built by jobs): built once.
    "serve-stack": ("test_serve_app", "test_serve_app_page", "test_serve_app_query", "test_serve_hardening",
                    "test_serve_metrics", "test_serve_index_changes"),
}
HEAVIEST_FIRST = ("local-ray", "serve-stack", "test_faults_nodes", "test_jobs_training", "test_faults_index",
                  "test_cli", "test_cluster_env", "test_pretrained_pipeline", "test_benchmark_table",
                  "test_cluster_autoscaler", "test_faults_shards", "test_pretrained_fast", "test_blip_slow")
_UNIT_OF = {module: unit for unit, modules in SCHEDULED_TOGETHER.items() for module in modules}


def _unit(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0].rpartition("/")[2].removesuffix(".py")
    return _UNIT_OF.get(module, module)


class _HeaviestFirst(dict):
    """xdist's queue of work units, handing out the heaviest unit left (HEAVIEST_FIRST, then the rest by name)."""

    def popitem(self, last: bool = True):
        unit = min(self, key=lambda u: (HEAVIEST_FIRST.index(u) if u in HEAVIEST_FIRST else len(HEAVIEST_FIRST), u))
        return unit, self.pop(unit)


def pytest_xdist_make_scheduler(config, log):
    """Whole modules (or SCHEDULED_TOGETHER units) per process, heaviest first; see above."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleUnits(LoadScopeScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            self.workqueue = _HeaviestFirst()

        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ModuleUnits(config, log)


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
