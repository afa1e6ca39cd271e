"""The node types a Ray cluster's autoscaler can launch, as Ray itself records them.

GPU placement must not depend on which nodes happen to be up when a job starts: a cluster whose GPU workers
start at 0 (ray_cluster.yaml) has no GPU until something asks for one. The autoscaler knows the node types it
may add; this module reads them where Ray keeps them, in this order:

1. the cluster config in the GCS (`ray._private.state.state.get_cluster_config()`), reported by autoscalers that
   report one (KubeRay, autoscaler v2 deployments);
2. the config file the running autoscaler (the head's `monitor.py`) was started with, read on the head node:
   the path from the monitor's own `--autoscaling-config` argument, else `~/ray_bootstrap_config.yaml`, where
   the cluster launcher (`ray up`) writes it. Its node types' `resources` are the ones the autoscaler
   bin-packs with (the AWS provider fills CPU/GPU/memory in from the instance type).

No autoscaler (a fixed cluster, `ray start` by hand, a local Ray): None, and the nodes up now decide.
"""

from __future__ import annotations

import functools
import os

from fastslow.log import get_logger

log = get_logger(__name__)

HEAD_RESOURCE = "node:__internal_head__"  # Ray's marker resource of the head node
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the autoscaler's config on the head
CONFIG_FLAG = "--autoscaling-config="


def node_types_from_config(config: dict) -> dict[str, dict[str, float]]:
    """{node type: resources} of a cluster-launcher config's worker types that can be launched (max_workers > 0)."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    return {name: {k: float(v) for k, v in (spec.get("resources") or {}).items()}
            for name, spec in types.items()
            if name != head and int(spec.get("max_workers", config.get("max_workers", 0)) or 0) > 0}


def node_types_from_gcs() -> dict[str, dict[str, float]] | None:
    """The same from the cluster config in the GCS, where an autoscaler reported one."""
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception as e:  # noqa: BLE001 - an older GCS without the call: fall back to the config file
        log.debug("no cluster config in the GCS: %s", e)
        return None
    if config is None or not config.node_group_configs:
        return None
    return {g.name: {k: float(v) for k, v in g.resources.items()}
            for g in config.node_group_configs if g.max_count != 0}  # -1: no limit


def autoscaler_config_path(gcs_address: str) -> str | None:
    """The config file of the autoscaler of the cluster at `gcs_address`, from its process's command line (this
    runs on the head node, where the autoscaler runs)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if not any(part.endswith("monitor.py") for part in cmdline):
            continue
        if not any(part == f"--gcs-address={gcs_address}" for part in cmdline):
            continue  # another cluster's autoscaler on this machine
        for part in cmdline:
            if part.startswith(CONFIG_FLAG):
                return os.path.expanduser(part[len(CONFIG_FLAG):])
    launcher = os.path.expanduser(LAUNCHER_CONFIG)
    return launcher if os.path.exists(launcher) else None


def _read_config_on_head(gcs_address: str) -> dict | None:
    """The autoscaler's config (parsed), or None where the cluster runs no autoscaler."""
    import yaml

    path = autoscaler_config_path(gcs_address)
    if path is None:
        return None
    with open(path) as f:
        return yaml.safe_load(f)  # the launcher writes JSON or YAML; YAML reads both


@functools.lru_cache(maxsize=4)
def launchable_node_types(gcs_address: str) -> dict[str, dict[str, float]] | None:
    """{node type: resources} the autoscaler of the connected cluster can add; None without an autoscaler.
    Cached per cluster: node types change only when the cluster is relaunched."""
    import ray

    from_gcs = node_types_from_gcs()
    if from_gcs is not None:
        return from_gcs
    heads = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {})]
    if not heads:
        return None
    if heads[0] == ray.get_runtime_context().get_node_id():
        config = _read_config_on_head(gcs_address)  # a job's driver runs on the head: no task needed
    else:
        read = ray.remote(num_cpus=0, resources={HEAD_RESOURCE: 0.001}, max_retries=0)(_read_config_on_head)
        try:
            config = ray.get(read.remote(gcs_address), timeout=60)
        except Exception as e:  # noqa: BLE001 - unreadable: decide from the nodes up now, and say so
            log.warning("could not read the autoscaler's node types (%s); GPU settings `auto` follow the nodes "
                        "up now", str(e).splitlines()[0])
            return None
    return None if config is None else node_types_from_config(config)
