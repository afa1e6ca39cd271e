"""Several Ray nodes on 127.0.0.1 with the node types of ray_cluster.yaml (not a test module).

`start_cluster(workers)` starts a head that runs no work (CPU 0, as the YAML's head) with the dashboard (for
`ray job submit`), then one node per entry of `workers`: "gpu" (the YAML's GPU worker type: 1 CPU, 1 GPU as Ray
counts it, and the `fastslow_gpu` resource; the GPU is declared, not real, so torch stays on the CPU) or "cpu"
(1 CPU and `fastslow_cpu`). Every process binds to 127.0.0.1 (the sandbox settings are applied first), each node's dashboard agent to a port
of its own (Ray's default, 52365, is taken by the session's `ray_head` or by the node before it, and the head's
agent is the one that runs submitted jobs);
`MultiNode.remove(node)` kills a node (its raylet and workers), as losing a machine does.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

from cluster.connect import free_port
from cluster.resources import CPU_NODE, GPU_NODE
from fastslow.env import apply_local_safety_env

NODE_OBJECT_STORE = 100_000_000  # per node: 4 nodes on a 24 GB machine beside the test's own processes
NODE_TYPES = {
    "gpu": {"num_cpus": 1, "num_gpus": 1, "resources": {GPU_NODE: 1}},
    "cpu": {"num_cpus": 1, "resources": {CPU_NODE: 1}},
}


@dataclass
class MultiNode:
    """A running multi-node cluster: `.address` (GCS, for ray.init and the CLI's --address), `.dashboard` (for
    `ray job submit --address`), `.nodes` {node id: type} of the worker nodes (the head is "head")."""

    cluster: object
    dashboard: str
    temp_dir: str | None = None
    nodes: dict[str, str] = field(default_factory=dict)
    handles: dict[str, object] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)  # node id: type, of the nodes `remove` killed

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self, kind: str) -> str:
        """Start a node of type `kind`; its node id once it has joined."""
        node = self.cluster.add_node(node_ip_address="127.0.0.1", object_store_memory=NODE_OBJECT_STORE,
                                     dashboard_agent_listen_port=free_port(), temp_dir=self.temp_dir,
                                     **NODE_TYPES[kind])
        self.cluster.wait_for_nodes()
        self.nodes[node.node_id] = kind
        self.handles[node.node_id] = node
        return node.node_id

    def remove(self, node_id: str) -> None:
        """Kill a worker node (raylet and workers, no graceful drain) and wait until the cluster sees it gone."""
        self.cluster.remove_node(self.handles.pop(node_id), allow_graceful=False)
        self.removed[node_id] = self.nodes.pop(node_id)
        self.cluster.wait_for_nodes()

    def kind_of(self, node_id: str, resources: dict | None = None) -> str:
        """"head", "gpu" or "cpu" (by the node's resources, for nodes the autoscaler added too, gone or not), else
        "?". `resources`: node_resources(self), when the caller has it already."""
        if node_id in self.nodes or node_id in self.removed or node_id == self.cluster.head_node.node_id:
            return self.nodes.get(node_id) or self.removed.get(node_id, "head")
        total = (node_resources(self) if resources is None else resources).get(node_id, {})
        return "gpu" if total.get(GPU_NODE) else "cpu" if total.get(CPU_NODE) else "?"

    def shutdown(self) -> None:
        self.cluster.shutdown()


def start_cluster(workers: list[str], head_cpus: float = 0, timeout_s: float = 120) -> MultiNode:
    """A head (runs no work unless `head_cpus`) with the dashboard, then one node per entry of `workers`."""
    apply_local_safety_env()
    from ray.cluster_utils import Cluster

    dashboard_port = free_port()
    # Ray's socket paths must stay short: a temp dir directly under /tmp.
    temp_dir = tempfile.mkdtemp(prefix="rmn", dir="/tmp")
    _make_default_address_dir()
    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "node_ip_address": "127.0.0.1", "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port, "object_store_memory": NODE_OBJECT_STORE,
        "temp_dir": temp_dir, "dashboard_agent_listen_port": free_port()})
    multi = MultiNode(cluster, f"http://127.0.0.1:{dashboard_port}", temp_dir=temp_dir)
    _own_address_file(cluster, temp_dir)
    for kind in workers:
        multi.add(kind)
        if time.monotonic() - t0 > timeout_s:
            multi.shutdown()
            raise TimeoutError(f"{len(workers)} nodes not up in {timeout_s} s")
    return multi


def node_kinds_of_actors(multi: MultiNode, class_name_part: str) -> list[str]:
    """The node type of every live actor whose class name contains `class_name_part` (Ray's state API)."""
    from ray.util.state import list_actors

    actors = list_actors(address=multi.address, filters=[("state", "=", "ALIVE")], limit=1000)
    return sorted(multi.kind_of(a.node_id) for a in actors if class_name_part in (a.class_name or ""))


def node_resources(multi: MultiNode) -> dict[str, dict]:
    """Every node's total resources, by node id, the nodes gone too (Ray's state API keeps them; ray.nodes() gives
    a dead node no resources, so an autoscaled node removed when idle could not be told apart)."""
    from ray.util.state import list_nodes

    return {n.node_id: n.resources_total for n in list_nodes(address=multi.address, detail=True, limit=1000)}


def node_kinds_of_tasks(multi: MultiNode, name_part: str) -> list[str]:
    """The node type of every finished or running task whose name contains `name_part` (Ray's state API)."""
    from ray.util.state import list_tasks

    tasks = list_tasks(address=multi.address, limit=10000, detail=True)
    resources = node_resources(multi)
    return sorted({multi.kind_of(t.node_id, resources) for t in tasks if name_part in (t.name or "") and t.node_id})


def wait_until(predicate, timeout_s: float, every_s: float = 0.5, what: str = "condition"):
    """Poll `predicate()` until it returns something truthy; that value, or TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not true after {timeout_s:.0f} s")


def env_without(keys) -> dict:
    """os.environ without `keys` (for a process that must not inherit them)."""
    return {k: v for k, v in os.environ.items() if k not in set(keys)}


FAKE_PROVIDER = {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True}
# ray_cluster.yaml's worker types as the fake provider launches them: same names, same custom resources.
AUTOSCALED_TYPES = {
    "cpu_worker": {"resources": {"CPU": 1, CPU_NODE: 1, "object_store_memory": NODE_OBJECT_STORE},
                   "node_config": {}, "min_workers": 1, "max_workers": 1},
    "gpu_worker": {"resources": {"CPU": 1, "GPU": 1, GPU_NODE: 1, "object_store_memory": NODE_OBJECT_STORE},
                   "node_config": {}, "min_workers": 0, "max_workers": 1},
}


def start_autoscaling_cluster(idle_timeout_s: float = 6.0) -> MultiNode:
    """A head (CPU 0) whose autoscaler launches AUTOSCALED_TYPES on this machine (Ray's fake multi-node provider,
    nodes started in the autoscaler's process on 127.0.0.1): one CPU worker from the start, the GPU type only
    on demand, removed after `idle_timeout_s` idle. What `ray.cluster_utils.AutoscalingCluster` does, without its
    `ray stop --force` (which would stop every Ray on the machine) and with the head in a Cluster of our own."""
    import json

    # The provider tags its head with this id and type name: the config's head type must be named so.
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID, FAKE_HEAD_NODE_TYPE
    from ray.cluster_utils import Cluster

    apply_local_safety_env()
    gcs_port, dashboard_port = free_port(), free_port()
    config = {
        "cluster_name": "fastslow-test", "max_workers": 2, "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60, "head_node_type": FAKE_HEAD_NODE_TYPE,
        "provider": {**FAKE_PROVIDER, "gcs_address": f"127.0.0.1:{gcs_port}"},
        "available_node_types": {FAKE_HEAD_NODE_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                                 **AUTOSCALED_TYPES},
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    temp_dir = tempfile.mkdtemp(prefix="ras", dir="/tmp")
    _make_default_address_dir()
    config_path = os.path.join(temp_dir, "autoscaler.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    # The autoscaler (started with the head) reads these; the head's node id must be the provider's head id.
    os.environ.update({"AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1",
                       "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID})
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": True,
            "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
            "object_store_memory": NODE_OBJECT_STORE, "temp_dir": temp_dir, "gcs_server_port": gcs_port,
            "dashboard_agent_listen_port": free_port(), "autoscaling_config": config_path})
    finally:
        for key in ("AUTOSCALER_UPDATE_INTERVAL_S", "RAY_FAKE_CLUSTER", "RAY_OVERRIDE_NODE_ID_FOR_TESTING"):
            os.environ.pop(key, None)
    _own_address_file(cluster, temp_dir)
    return MultiNode(cluster, f"http://127.0.0.1:{dashboard_port}", temp_dir=temp_dir)


def _make_default_address_dir() -> None:
    """Cluster writes the head's address to Ray's default temp dir (/tmp/ray) whatever temp dir it is given, and
    fails when that folder is missing: on a fresh machine it is, until some Ray has run with the default."""
    from ray._private.utils import get_ray_address_file

    os.makedirs(os.path.dirname(get_ray_address_file(None)), exist_ok=True)


def _own_address_file(cluster, temp_dir: str) -> None:
    """Write the cluster's address where its own processes look for it. A job's driver is given RAY_ADDRESS=auto,
    which Ray resolves from `<temp dir>/ray_current_cluster` of the node running the job; Cluster writes only
    /tmp/ray's, which the next cluster started on this machine overwrites (and without either, "auto" joins any
    Ray found running here)."""
    from ray._private.utils import write_ray_address

    write_ray_address(cluster.address, temp_dir)


def alive_nodes_with(resource: str) -> list[str]:
    """Ids of the live nodes of the connected cluster that have `resource`."""
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(resource)]
