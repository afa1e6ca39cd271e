"""ray_cluster.yaml against Ray's own cluster-config schema (what `ray up` checks before it starts anything), and
its promises: no API key, no Ray start; exactly one FAISS build per node (faiss-gpu on GPU nodes only), a failed
install stops the node's setup; the dashboard on the head's loopback only. Commands run here through bash with fake
`aws`, `ray`, `pip` and `python` on PATH that record their calls."""

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
        path.write_text(f'#!/bin/bash\necho "{name} $* key=$FASTSLOW_API_KEY" >> {tmp_path}/calls.log\n{body}\n')
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


@pytest.mark.parametrize("aws", ["exit 0", "exit 255", "echo ''"], ids=["prints-nothing", "fails", "empty-line"])
def test_no_api_key_no_ray_start(cluster_config, tmp_path, aws):
    env = _fake_bin(tmp_path, aws=aws, ray="exit 0")
    for command in _start_commands(cluster_config):
        status, stderr, calls = _run(command, env, tmp_path)
        assert status != 0, command  # the launcher marks the node failed
        assert "aws secretsmanager get-secret-value" in calls and "ray " not in calls, calls  # ray start never ran
        if aws != "exit 255":
            assert "no API key" in stderr


def test_with_the_key_ray_starts_with_it_and_the_dashboard_on_loopback(cluster_config, tmp_path):
    env = _fake_bin(tmp_path, aws="echo fs-secret-key", ray="exit 0")
    head, worker = _start_commands(cluster_config)
    for command in (head, worker):
        status, stderr, calls = _run(command, env, tmp_path)
        assert status == 0, stderr
        assert "ray start" in calls and "key=fs-secret-key" in calls.split("ray start", 1)[1], calls
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in json.dumps(cluster_config)
    assert "fs-secret-key" not in json.dumps(cluster_config)  # the key is never written down


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
