"""ray_cluster.yaml against Ray's own cluster-config schema (what `ray up` checks before it starts anything), and
its promises: no API key (or storage root), no Ray start; exactly one FAISS build per node (faiss-gpu on GPU nodes
only), a failed install stops the node's setup; the dashboard on the head's loopback only. Commands run here through
bash with fake `ray` and `pip` on PATH that record their calls; the nodes' settings come from a moto account through
the real `python -m cluster.node_env`, as on an EC2 node (credentials and region from a fake instance-metadata
endpoint)."""

import json
import os
import subprocess
import sys
import tomllib

import jsonschema
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster_config():
    with open(os.path.join(REPO, "ray_cluster.yaml")) as f:
        return yaml.safe_load(f)


def test_cluster_config_is_valid_for_the_cluster_launcher(cluster_config):
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        schema = json.load(f)
    jsonschema.validate(cluster_config, schema)
    validate_config(prepare_config(cluster_config))  # with the launcher's defaults filled in, as `ray up` does
    broken = {**cluster_config, "max_worker": 3}  # a typo is refused, so the schema really is applied
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(broken, schema)


def test_cluster_has_gpu_and_cpu_workers_and_installs_the_project(cluster_config):
    types = cluster_config["available_node_types"]
    head = types[cluster_config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["max_workers"] == 0  # the head schedules, it does no work
    assert types["gpu_worker"]["resources"].get("fastslow_gpu") == 1
    assert types["gpu_worker"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert types["cpu_worker"]["resources"].get("fastslow_cpu") == 1 and types["cpu_worker"]["min_workers"] >= 1
    assert sum(t["max_workers"] for t in types.values()) <= cluster_config["max_workers"]


def _setup_commands(config: dict) -> dict[str, list[str]]:
    """Each node type's setup commands as the launcher runs them: the head gets setup_commands + head_setup_commands;
    a worker type its own worker_setup_commands if it has them, which replace the global lists (Ray's
    StandardAutoscaler._get_node_type_specific_fields), else setup_commands + worker_setup_commands."""
    from ray.autoscaler._private.util import merge_setup_commands, prepare_config

    merged = merge_setup_commands(prepare_config(json.loads(json.dumps(config))))
    types = merged["available_node_types"]
    return {name: merged["head_setup_commands"] if name == merged["head_node_type"]
            else types[name].get("worker_setup_commands", merged["worker_setup_commands"]) for name in types}


def test_each_node_type_installs_exactly_one_faiss_build(cluster_config):
    commands = _setup_commands(cluster_config)
    for name, setup in commands.items():
        text = " ".join(setup)
        extra = "gpu" if "fastslow_gpu" in cluster_config["available_node_types"][name]["resources"] else "cpu"
        assert setup and f"pip install -q -e '.[{extra}]'" in text, (name, setup)  # the project, one FAISS build
        assert f"'.[{'cpu' if extra == 'gpu' else 'gpu'}]'" not in text and "faiss-cpu" not in text, (name, setup)
        assert "grep -ic '^faiss')\" = 1" in text, (name, setup)  # and checked: one package provides `faiss`
        assert "|| true" not in text and "||true" not in text, (name, setup)  # a failed install fails the node
    assert "faiss.get_num_gpus() < 1" in " ".join(commands["gpu_worker"])  # GPU FAISS sees the GPU
    all_commands = json.dumps({k: v for k, v in cluster_config.items() if "commands" in k})
    assert "|| true" not in all_commands and "uninstall" not in all_commands


def test_the_faiss_builds_are_extras_and_the_test_setup_gets_the_cpu_one():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("faiss")]
    extras = project["optional-dependencies"]
    assert extras["cpu"] == ["faiss-cpu==1.15.1"]
    assert len(extras["gpu"]) == 1 and extras["gpu"][0].startswith("faiss-gpu-cu12==")  # pinned, CUDA 12
    assert "fastslow[cpu]" in extras["test"]  # README's `pip install -e '.[test]'` still gets faiss-cpu


def test_without_faiss_the_error_names_both_extras(monkeypatch):
    from fastslow.errors import FastslowError
    from fastslow.index.shards import import_faiss

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    with pytest.raises(FastslowError) as e:
        import_faiss()
    message = str(e.value)
    assert "\n" not in message and "'.[cpu]'" in message and "'.[gpu]'" in message


def _fake_bin(tmp_path, **scripts: str) -> dict:
    """An environment whose PATH starts with fake commands: NAME=body (bash), each call appended to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/bash\necho "{name} $* key=$FASTSLOW_API_KEY root=$FASTSLOW_STORAGE_ROOT '
                        f'region=$AWS_DEFAULT_REGION" >> {tmp_path}/calls.log\n{body}\n')
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "RAY_HEAD_IP": "10.0.0.1"}


def _run(command: str, env: dict, tmp_path) -> tuple[int, str, str]:
    """`command` as the launcher runs it (bash -c '... && (cmd)'); (exit status, stderr, the calls made)."""
    done = subprocess.run(["bash", "-c", f"export OMP_NUM_THREADS=1 && ({command})"], env=env, capture_output=True,
                          text=True, timeout=30)
    log = tmp_path / "calls.log"
    calls = log.read_text() if log.exists() else ""
    log.unlink(missing_ok=True)
    return done.returncode, done.stderr, calls


def _start_commands(config: dict) -> list[str]:
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    commands = [c for c in starts if "ray start" in c]
    assert len(commands) == 2
    return commands


@pytest.fixture
def aws_account(moto_endpoint, tmp_path):
    """The moto server as the nodes' AWS account, reached as an EC2 node reaches AWS: no keys and no region in the
    environment, credentials and region from a fake instance-metadata endpoint. (env for the start commands with a
    fake `ray` and the real `python`, boto3 clients to set the secret and the parameter in the account)."""
    import boto3
    from fake_imds import FakeIMDS

    imds = FakeIMDS()
    for name in ("config", "credentials"):
        (tmp_path / name).write_text("")
    env = {**_fake_bin(tmp_path, ray="exit 0", python=f'exec {sys.executable} "$@"'),
           "AWS_ENDPOINT_URL": moto_endpoint, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
           "AWS_CONFIG_FILE": str(tmp_path / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials")}
    kw = {"region_name": "us-west-2", "endpoint_url": moto_endpoint, "aws_access_key_id": "testing",
          "aws_secret_access_key": "testing"}
    secrets, ssm = boto3.client("secretsmanager", **kw), boto3.client("ssm", **kw)
    try:
        yield env, secrets, ssm, imds
    finally:
        imds.close()
        for call, kwargs in ((secrets.delete_secret, {"SecretId": "fastslow/api-key",
                                                      "ForceDeleteWithoutRecovery": True}),
                             (ssm.delete_parameter, {"Name": "/fastslow/storage-root"})):
            try:
                call(**kwargs)
            except Exception:  # not created by this test
                pass


@pytest.mark.parametrize("account", ["nothing", "no-key", "empty-key", "no-root", "root-not-s3"])
def test_no_api_key_or_storage_root_no_ray_start(cluster_config, tmp_path, aws_account, account):
    env, secrets, ssm, _ = aws_account
    if account not in ("nothing", "no-key"):
        secrets.create_secret(Name="fastslow/api-key", SecretString="  " if account == "empty-key" else "k-1")
    if account in ("no-key", "empty-key", "root-not-s3"):
        ssm.put_parameter(Name="/fastslow/storage-root", Type="String",
                          Value="my-bucket/fastslow" if account == "root-not-s3" else "s3://b/fastslow")
    expected = {"nothing": "secret fastslow/api-key", "no-key": "secret fastslow/api-key",
                "empty-key": "secret fastslow/api-key (it is empty)", "no-root": "parameter /fastslow/storage-root",
                "root-not-s3": "expected s3://BUCKET"}[account]
    for command in _start_commands(cluster_config):
        status, stderr, calls = _run(command, env, tmp_path)
        assert status != 0, command  # the launcher marks the node failed
        assert "python -m cluster.node_env" in calls and "ray " not in calls, calls  # ray start never ran
        [line] = stderr.strip().splitlines()  # one line, naming what is missing
        assert expected in line and line.endswith("Ray not started"), line


def test_with_the_key_and_root_ray_starts_with_them_and_the_dashboard_on_loopback(cluster_config, tmp_path,
                                                                                 aws_account):
    env, secrets, ssm, imds = aws_account
    secrets.create_secret(Name="fastslow/api-key", SecretString="fs-secret 'key'")  # quoted through `eval`
    ssm.put_parameter(Name="/fastslow/storage-root", Type="String", Value="s3://my-bucket/fastslow/")
    head, worker = _start_commands(cluster_config)
    for command in (head, worker):
        status, stderr, calls = _run(command, env, tmp_path)
        assert status == 0, stderr
        started = calls.split("ray start", 1)[1]
        assert "key=fs-secret 'key' root=s3://my-bucket/fastslow region=us-west-2" in started, calls
        assert "fs-secret" not in stderr
    # The node's credentials and region came from the instance metadata (no keys or region in its environment).
    assert imds.credential_requests(imds.requests) and any("availability-zone" in r[1] for r in imds.requests)
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in json.dumps(cluster_config)
    assert "fs-secret" not in json.dumps(cluster_config) and "s3://" not in json.dumps(cluster_config)


def test_a_failed_install_stops_the_setup(cluster_config, tmp_path):
    (tmp_path / "fastslow").mkdir()
    for name, setup in _setup_commands(cluster_config).items():
        for pip, expect_ok in (("exit 1", False), ('[ "$1" = list ] && echo faiss-x==1; exit 0', True)):
            env = _fake_bin(tmp_path, pip=pip, python="exit 0")
            results = [_run(c.replace("/home/ray/fastslow", str(tmp_path / "fastslow")), env, tmp_path)
                       for c in setup]
            assert all(r[0] == 0 for r in results) == expect_ok, (name, pip, results)
            if not expect_ok:  # nothing after the failed install ran (no check, no import)
                assert all("python" not in r[2] for r in results), (name, results)


def test_the_aws_policies_grant_what_the_nodes_read_and_the_head_launches(cluster_config):
    """cluster/aws/*.json, as the README's one-time set-up applies them, against the names the config and
    cluster/node_env.py use: a renamed secret, parameter or profile fails here, not on a node."""
    from cluster.node_env import API_KEY_SECRET, STORAGE_ROOT_PARAMETER

    def policy(name: str) -> dict:
        with open(os.path.join(REPO, "cluster", "aws", name)) as f:
            return json.load(f)

    node = {s["Sid"]: s for s in policy("node-policy.json")["Statement"]}
    assert node["ApiKey"]["Resource"].endswith(f":secret:{API_KEY_SECRET}-*")  # Secrets Manager adds a suffix
    assert node["StorageRoot"]["Resource"].endswith(f":parameter{STORAGE_ROOT_PARAMETER}")
    assert node["Objects"]["Resource"] == "arn:aws:s3:::BUCKET/*"
    assert node["Bucket"]["Resource"] == "arn:aws:s3:::BUCKET"
    head = {s["Sid"]: s for s in policy("head-policy.json")["Statement"]}
    assert "ec2:RunInstances" in head["LaunchWorkers"]["Action"]
    assert policy("ec2-trust.json")["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    types = cluster_config["available_node_types"]
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Name"] for name, t in types.items()}
    head_type = cluster_config["head_node_type"]
    assert profiles.pop(head_type) == "fastslow-head" and set(profiles.values()) == {"fastslow-node"}
    assert "arn:aws:iam::*:role/fastslow-node" in head["WorkersRole"]["Resource"]  # the head passes the workers' role
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    for name in ("ec2-trust.json", "node-policy.json", "head-policy.json", API_KEY_SECRET, STORAGE_ROOT_PARAMETER):
        assert name in readme, name
