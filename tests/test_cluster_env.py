"""A cluster's jobs run with their nodes' environment, and get credentials as on EC2 (issue 23, items 1 and 5).

One Ray node is started here the way an EC2 node starts it (`ray start --head` from a shell that has no dead proxy,
no offline flag, no Ray auth setting and no AWS keys, only an instance-metadata endpoint); the index job
(`python -m jobs.build_index`, i.e. `fastslow index` as a job) is submitted to it with `ray job submit --address`
and indexes a bucket on the moto server into that bucket. tests/env_probe_job.py records the environment of the
job's driver (it runs the job's module in its own process) and of every worker process of the job (Ray's
`worker_process_setup_hook`: the embedding actor, the decode and write tasks, Ray Data's own actors); Ray's state
API says which worker ran what. Shown:

- fastslow adds no sandbox setting (fastslow.env) to any of them that the node did not have, and botocore resolves
  no proxy there for the instance-metadata address or for an S3 endpoint on another host;
- with no AWS keys anywhere, the credentials served by a fake instance-metadata endpoint on 127.0.0.1
  (AWS_EC2_METADATA_SERVICE_ENDPOINT, IMDSv2 as botocore asks for it) are what the driver, the embedding actor and
  the decode and write tasks sign their S3 requests with, and the job reads and writes the bucket with them; the
  same lookup with fastslow.env's settings added fails (the control);
- `cluster.connect.connect` on a cluster address leaves the process environment untouched, and applies
  fastslow.env's settings only where it starts a local Ray (no Ray started: `ray.init` replaced).

The app is then deployed there with `fastslow serve --address DASHBOARD` (a deploy job), and its replicas are
checked alike (their environment at start, from /proc) while they answer from the index in the bucket.

The node's own settings here: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (everything binds to 127.0.0.1) and
RAY_USAGE_STATS_ENABLED=0, as this machine requires of every Ray; HOME is a temp dir holding
ray_bootstrap_config.yaml, which keeps the dashboard from probing cloud-metadata addresses (see
`_metadata_probe_is_off`); AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_DEFAULT_REGION, AWS_CONFIG_FILE and
AWS_SHARED_CREDENTIALS_FILE (empty files); RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 (no 30 s drain at teardown). It
has no RAY_AUTH_MODE: `ray start` leaves token auth off where no token exists (none in that HOME), so
`ray job submit` works and the job can be checked for a RAY_AUTH_MODE that fastslow would add.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from unittest import mock

import pytest

from cluster.connect import free_port
from fastslow import storage
from fastslow.env import LOCAL_SAFETY_ENV
from fake_imds import FakeIMDS
from helpers import job_id, job_submitter, job_summary, start_ray_head, stop_ray_node, wait_for

METADATA_URL = "http://169.254.169.254/latest/api/token"
REMOTE_S3 = "http://minio.internal:9000"
# Every setting fastslow.env sets for a local Ray, and the other proxy variables.
SANDBOX_KEYS = sorted(set(LOCAL_SAFETY_ENV) | {"https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"})
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
            "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_EC2_METADATA_DISABLED")
IMAGES = 8


# --- a Ray node started as on EC2 ---------------------------------------------------------------------------------

def _metadata_probe_is_off(home: str) -> bool:
    """Whether Ray's one cloud-metadata probe at cluster start is skipped for a node whose HOME is `home`.

    Ray 2.60 runs it in the dashboard's usage-stats module (dashboard/modules/usage_stats/usage_stats_head.py,
    `run`; with usage stats off too, and with include_dashboard=False, where it is the one module
    ray/_private/services.py still has the dashboard process load):
    `ray._common.usage.usage_lib.get_cluster_config_to_report(os.path.expanduser("~/ray_bootstrap_config.yaml"))`.
    Only its `except FileNotFoundError` branch makes requests: `get_cloud_from_metadata_requests` (169.254.169.254
    for Azure and AWS, metadata.google.internal for GCP), in the Kubernetes branch (KUBERNETES_SERVICE_HOST set) as
    well as outside it. When the file opens, it is only parsed (a parse error is caught and logged), so nothing is
    requested. The other metadata requests in Ray's code are the TPU ones (ray/_private/accelerators/tpu.py,
    made only where /dev/accel* or /dev/vfio TPU devices exist; none here) and the autoscaler's Azure provider
    (not used). Checked here by calling that function as the dashboard does, with `requests.get` refusing, and
    KUBERNETES_SERVICE_HOST set so that branch is covered too."""
    from ray._common.usage import usage_lib

    asked = []
    with mock.patch.object(usage_lib.requests, "get", side_effect=lambda url, **kw: asked.append(url) or 1 / 0), \
            mock.patch.dict(os.environ, {"HOME": home, "KUBERNETES_SERVICE_HOST": "10.0.0.1"}):
        usage_lib.get_cluster_config_to_report(os.path.expanduser("~/ray_bootstrap_config.yaml"))
    return not asked


def _node_env(home: str, imds: FakeIMDS) -> dict:
    """The environment of an EC2 node's `ray start`: this process's, less every sandbox setting, AWS key and
    fastslow setting, plus the node's own settings (module docstring)."""
    env = {k: v for k, v in os.environ.items()
           if k not in SANDBOX_KEYS and not k.startswith(("FASTSLOW_", "AWS_", "RAY_")) and k != "PYTEST_CURRENT_TEST"}
    for name in ("aws_config", "aws_credentials"):
        open(os.path.join(home, name), "w").close()
    env.update({"HOME": home, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops the node at once (teardown)
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.path.join(home, "aws_config"),
                "AWS_SHARED_CREDENTIALS_FILE": os.path.join(home, "aws_credentials")})
    return env


@pytest.fixture(scope="module")
def ec2_node():
    """A Ray head (2 CPUs) started by `ray start --head --block` in a session of its own with `_node_env`, with a
    fake instance-metadata endpoint: {'dashboard', 'gcs', 'env', 'imds', 'home'}."""
    # Short paths under /tmp: Ray's socket paths are limited to 107 bytes.
    home = tempfile.mkdtemp(prefix="rce", dir="/tmp")
    temp_dir = os.path.join(home, "r")
    with open(os.path.join(home, "ray_bootstrap_config.yaml"), "w") as f:
        f.write("# Only here to turn off Ray's cloud-metadata probe at cluster start (tests/test_cluster_env.py).\n"
                "cluster_name: fastslow-test\n")
    assert _metadata_probe_is_off(home), "Ray would probe cloud-metadata addresses: not starting a node without proxy"
    imds = FakeIMDS()
    env = _node_env(home, imds)
    leader, dashboard, gcs = start_ray_head(temp_dir, object_store_bytes=300_000_000, env=env)
    try:
        yield {"dashboard": dashboard, "gcs": gcs, "env": env, "imds": imds, "home": home}
    finally:
        stop_ray_node(leader, temp_dir)
        imds.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_index_job(ec2_node, moto_endpoint, tmp_path_factory):
    """The index job (`python -m jobs.build_index`, run by tests/env_probe_job.py) of IMAGES images in a moto
    bucket, with a tiny Fast checkpoint in the same bucket and the index written there: {'status', 'logs',
    'bucket', 'records' {pid: record}, 'roles' {pid: set of task/actor names}, 'imds' (the requests the fake
    metadata endpoint had while the job ran)}. The job's runtime env sets AWS_ENDPOINT_URL (moto) and the probe's
    output folder only."""
    import torch
    from helpers import tiny_config
    from media_fixtures import make_png_bytes
    from ray.util.state import list_tasks

    from fastslow.models import FastModel, save_checkpoint

    # Set up from here with moto's any-keys credentials (conftest): the job itself has none.
    bucket = f"s3://ec2-{uuid.uuid4().hex[:10]}"
    storage.s3_client().create_bucket(Bucket=bucket[5:])
    for i in range(IMAGES):
        storage.write_bytes(f"{bucket}/images/img{i:02d}.png", make_png_bytes(color=(30 * i, 200 - 20 * i, 90)))
    torch.manual_seed(0)
    save_checkpoint(FastModel(tiny_config()).eval(), f"{bucket}/runs/fast")

    probe_dir = str(tmp_path_factory.mktemp("env-probe"))
    runtime_env = {"env_vars": {"AWS_ENDPOINT_URL": moto_endpoint, "FASTSLOW_ENV_PROBE_DIR": probe_dir},
                   "worker_process_setup_hook": "tests.env_probe_job.record"}
    submit, stop_all = job_submitter(ec2_node["dashboard"])
    job = job_id("ec2-index")
    imds_before = len(ec2_node["imds"].requests)
    try:
        client = submit(job, "tests.env_probe_job", "jobs.build_index", "--data", f"{bucket}/images",
                        "--checkpoint", f"{bucket}/runs/fast", "--root", f"{bucket}/index", "index.shards=1",
                        "embed.partition_size=4", "embed.concurrency=1", runtime_env=json.dumps(runtime_env))
        status, logs = wait_for(client, job, timeout=240)
    finally:
        stop_all()
    records = {}
    for path in glob.glob(os.path.join(probe_dir, "*.json")):
        with open(path) as f:
            record = json.load(f)
        records[record["pid"]] = record
    roles: dict[int, set] = {}
    for task in list_tasks(address=ec2_node["dashboard"], detail=True, limit=10000, raise_on_missing_output=False):
        if task.worker_pid:
            roles.setdefault(task.worker_pid, set()).add(task.name)
    return {"status": status, "logs": logs, "bucket": bucket, "records": records, "roles": roles,
            "imds": ec2_node["imds"].requests[imds_before:]}


def _pids_that_ran(job: dict, name_part: str) -> list[int]:
    return sorted(pid for pid, names in job["roles"].items() if any(name_part in n for n in names))


def _stages(job: dict) -> dict[str, list[dict]]:
    """The records of the driver, of the embedding actor, of the workers that ran decode_stage and of the
    PartitionWriter actor (on one node Ray Data fuses decode_stage into the embedding actor); each stage has at
    least one."""
    records = job["records"]
    stages = {"driver": [r for r in records.values() if r["role"] == "driver"]}
    for stage in ("decode_stage", "FastEmbedder", "PartitionWriter"):
        pids = _pids_that_ran(job, stage)
        assert pids, f"no {stage} task in Ray's state API: {job['roles']}"
        stages[stage] = [records[pid] for pid in pids if pid in records]
        assert stages[stage], f"{stage} ran in pids {pids}, none recorded (recorded: {sorted(records)})"
    assert len(stages["driver"]) == 1, [r["argv"] for r in stages["driver"]]
    return stages


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_node_runs_without_any_sandbox_setting(ec2_node):
    env = ec2_node["env"]
    assert not {k for k in SANDBOX_KEYS if k in env} - {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED"}
    assert not {k for k in AWS_KEYS if k in env}
    with mock.patch.dict(os.environ, env, clear=True):
        from botocore.utils import get_environ_proxies

        assert get_environ_proxies(METADATA_URL) == get_environ_proxies(REMOTE_S3) == {}
        assert get_environ_proxies(ec2_node["imds"].url) == {}


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_job_driver_tasks_and_embedding_actor_get_no_sandbox_setting(ec2_node, s3_index_job):
    from botocore.utils import get_environ_proxies

    assert s3_index_job["status"] == "SUCCEEDED", s3_index_job["logs"][-4000:]
    node_env = ec2_node["env"]
    stages = _stages(s3_index_job)
    for stage, records in stages.items():
        for record in records:
            env = record["env"]
            added = {k: env.get(k) for k in SANDBOX_KEYS if env.get(k) != node_env.get(k)}
            assert added == {}, f"{stage} (pid {record['pid']}) runs with settings its node did not have: {added}"
            assert "RAY_AUTH_MODE" not in env and not {k for k in AWS_KEYS if k in env}, stage
            # botocore, in that process and in its recorded environment: no proxy for the metadata address (and
            # the fake one) or for an S3 endpoint on another host.
            assert record["proxies"] == {METADATA_URL: {}, REMOTE_S3: {}, ec2_node["imds"].url: {}}, stage
            with mock.patch.dict(os.environ, env, clear=True):
                assert get_environ_proxies(METADATA_URL) == get_environ_proxies(REMOTE_S3) == {}
    # Every worker process of the job was recorded, and none has a sandbox setting either.
    for record in s3_index_job["records"].values():
        env = record["env"]
        assert {k: env.get(k) for k in SANDBOX_KEYS if env.get(k) != node_env.get(k)} == {}, record["argv"]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_credentials_from_instance_metadata_let_the_job_read_and_write_the_bucket(ec2_node, s3_index_job):
    assert s3_index_job["status"] == "SUCCEEDED", s3_index_job["logs"][-4000:]
    summary = job_summary(s3_index_job["logs"])
    assert summary["read"] == summary["indexed"] == IMAGES and summary["errors"] == 0, summary
    bucket = s3_index_job["bucket"]
    # Written by the job: the live version (read back here with moto's any-keys credentials).
    assert storage.read_text(f"{bucket}/index/CURRENT").strip() == summary["version"]
    assert storage.exists(f"{bucket}/index/versions/{summary['version']}/manifest.json")
    imds, asked = ec2_node["imds"], s3_index_job["imds"]
    assert imds.credential_requests(asked) >= 1 and asked[0] == ("PUT", "/latest/api/token", False), asked
    stages = _stages(s3_index_job)
    # The driver (lists the images, reads the checkpoint, publishes), decode_stage (reads the images), the embedding
    # actor (loads the checkpoint) and the PartitionWriter actor (writes the partitions) signed with the role's
    # credentials, found by botocore's instance-metadata provider ("iam-role"): there were no others (no keys in the
    # environment, empty credentials and config files, no container or web-identity settings).
    for stage in ("driver", "decode_stage", "FastEmbedder", "PartitionWriter"):
        used = [c for r in stages[stage] for c in r["s3_credentials"]]
        assert used, f"{stage}: no S3 client recorded"
        assert all(c == {"method": "iam-role", "access_key": imds.access_key} for c in used), (stage, used)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_fake_endpoint_is_behind_a_dead_proxy(ec2_node):
    """The control: in the node's environment with fastslow.env's settings added, botocore's credential lookup
    sends the fake endpoint's requests to the dead proxy and fails, as it would on EC2; in the node's own
    environment it gets the role's credentials."""
    import botocore.session
    from botocore.exceptions import ProxyConnectionError

    imds = ec2_node["imds"]
    with mock.patch.dict(os.environ, {**ec2_node["env"], **LOCAL_SAFETY_ENV}, clear=True):
        try:
            found = botocore.session.get_session().get_credentials()
        except ProxyConnectionError:
            found = None
    assert found is None
    with mock.patch.dict(os.environ, ec2_node["env"], clear=True):
        found = botocore.session.get_session().get_credentials()
    assert (found.method, found.access_key) == ("iam-role", imds.access_key)


def _process_env(pid: int) -> dict:
    """The environment a process started with (/proc: the node is on this machine)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = (item.decode(errors="replace").partition("=") for item in f.read().split(b"\0") if item)
        return {key: value for key, _, value in pairs}


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_serve_replicas_get_no_sandbox_setting_and_read_s3_with_the_roles_credentials(ec2_node, s3_index_job,
                                                                                    tmp_path):
    """`fastslow serve --address DASHBOARD` on the EC2-like node (the deploy job and the app's replicas): each
    replica starts with no setting its node did not have, botocore resolves no proxy there, and the app answers from
    the index the job wrote to the bucket, read with the instance-metadata credentials (the only ones)."""
    import yaml
    from ray.util.state import list_actors
    from serve_helpers import post

    from serve_app.launch import load_serve_config

    assert s3_index_job["status"] == "SUCCEEDED", s3_index_job["logs"][-4000:]
    bucket, port = s3_index_job["bucket"], free_port()
    config = load_serve_config(os.path.join(os.path.dirname(__file__), "..", "configs", "serve_synth.yaml"))
    # The replicas' S3 endpoint is the moto server (as a MinIO endpoint would be named in the app's config).
    config["applications"][0]["runtime_env"]["env_vars"]["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]
    config_path = tmp_path / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    imds_before = len(ec2_node["imds"].requests)
    serve_cmd = os.path.join(os.path.dirname(sys.executable), "serve")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "fastslow", "serve", "--address", ec2_node["dashboard"], "--config",
             str(config_path), "--index-root", f"{bucket}/index", "--fast", f"{bucket}/runs/fast", "--port", str(port),
             "--cluster-python", sys.executable, "--no-progress"], capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        status, answer = post(f"http://127.0.0.1:{port}", {"query": "a photo", "k": 3, "rerank": False})
        assert status == 200 and len(answer["results"]) == 3, answer

        replicas = [a for a in list_actors(address=ec2_node["dashboard"], filters=[("state", "=", "ALIVE")],
                                           detail=True, limit=1000)
                    if (a.class_name or "").startswith("ServeReplica:fastslow:")]
        assert {a.class_name.rpartition(":")[2] for a in replicas} >= {"Ingress", "ShardRetriever0"}
        node_env = ec2_node["env"]
        for replica in replicas:
            env = _process_env(replica.pid)
            added = {k: env.get(k) for k in SANDBOX_KEYS if env.get(k) != node_env.get(k)
                     and k not in config["applications"][0]["runtime_env"]["env_vars"]}  # Serve's own, from the config
            assert added == {}, f"{replica.class_name} starts with settings its node did not have: {added}"
            assert "RAY_AUTH_MODE" not in env and not {k for k in AWS_KEYS if k in env}, replica.class_name
            with mock.patch.dict(os.environ, env, clear=True):
                from botocore.utils import get_environ_proxies

                assert get_environ_proxies(METADATA_URL) == get_environ_proxies(REMOTE_S3) == {}
        # The replicas (shard retriever, encoder) loaded the index and checkpoint from the bucket: with the role's.
        assert ec2_node["imds"].credential_requests(ec2_node["imds"].requests[imds_before:]) >= 1
    finally:
        subprocess.run([serve_cmd, "shutdown", "-y", "--address", ec2_node["dashboard"]], capture_output=True,
                       timeout=120)


# --- cluster.connect.connect: the environment on a cluster, and for a local Ray (no Ray started) ----------------

@pytest.fixture
def fake_ray_init(monkeypatch):
    """ray.init replaced: the calls' keyword arguments, and the environment at each call. No sandbox setting in
    the environment to start with (as a user's shell); the whole environment is put back afterwards (so the tests
    set variables in os.environ directly: monkeypatch.setenv would undo to this fixture's environment)."""
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append((kw, dict(os.environ))))
    with mock.patch.dict(os.environ):
        for key in SANDBOX_KEYS + ["RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR"]:
            os.environ.pop(key, None)
        yield calls


@pytest.mark.parametrize("how", ["argument", "RAY_ADDRESS"])
def test_connect_to_a_cluster_leaves_the_environment_untouched(fake_ray_init, how):
    from cluster.connect import WORKER_ENV_KEYS, connect

    os.environ["HTTP_PROXY"] = "http://proxy.corp:3128"  # a user's own proxy passes through as it is
    if how == "RAY_ADDRESS":
        os.environ["RAY_ADDRESS"] = "10.0.0.5:6379"
    before = dict(os.environ)
    assert connect("10.0.0.5:6379" if how == "argument" else None) == "10.0.0.5:6379"
    assert dict(os.environ) == before
    [(kwargs, env_at_init)] = fake_ray_init
    assert env_at_init == before and kwargs["address"] == "10.0.0.5:6379"
    # Workers get only what this process has set, of the keys that travel.
    assert kwargs["runtime_env"] == {"env_vars": {k: before[k] for k in WORKER_ENV_KEYS if k in before}}
    assert not {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "http_proxy"} & set(kwargs["runtime_env"]["env_vars"])


def test_connect_without_an_address_applies_the_local_settings(fake_ray_init):
    from cluster.connect import connect

    os.environ["HTTP_PROXY"] = "http://proxy.corp:3128"  # a value already set wins
    assert connect(num_cpus=1) == "local"
    [(kwargs, env_at_init)] = fake_ray_init
    assert kwargs["address"] == "local"
    expected = {**LOCAL_SAFETY_ENV, "HTTP_PROXY": "http://proxy.corp:3128"}
    assert {k: env_at_init.get(k) for k in LOCAL_SAFETY_ENV} == expected  # set before Ray starts
    assert {k: os.environ.get(k) for k in LOCAL_SAFETY_ENV} == expected


def test_the_bootstrap_config_turns_off_rays_metadata_probe(tmp_path):
    """The check `ec2_node` relies on, against this Ray: without the file Ray asks the metadata addresses (here
    refused before any socket opens), with it nothing is asked."""
    assert not _metadata_probe_is_off(str(tmp_path))
    (tmp_path / "ray_bootstrap_config.yaml").write_text("cluster_name: x\n")
    assert _metadata_probe_is_off(str(tmp_path))
