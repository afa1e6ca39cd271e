"""ray_cluster.yaml against Ray's own cluster-config schema (what `ray up` checks before it starts anything)."""

import json
import os

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
    assert any("pip install" in c and "-e ." in c for c in cluster_config["setup_commands"])


def test_cluster_turns_the_api_key_on_without_writing_it_down(cluster_config):
    starts = cluster_config["head_start_ray_commands"] + cluster_config["worker_start_ray_commands"]
    for command in (c for c in starts if "ray start" in c):
        assert "export FASTSLOW_API_KEY=$(aws secretsmanager get-secret-value" in command
        assert 'test -n "$FASTSLOW_API_KEY"' in command  # no key, no node: the endpoint is never open by accident
