"""What each stage asks the cluster for, in one place: GPUs where the cluster has them, CPUs otherwise.

Configs say `auto` (the default) or a number; `auto` is resolved against the connected cluster when a
job or the app starts, so one config runs on a laptop, a CPU cluster and a GPU cluster. The rule: `auto` asks
for a GPU when a node up now has one or when a node type the cluster's autoscaler can launch has one
(cluster/node_types.py), so a cluster whose GPU workers start at 0 gets them added on demand; a cluster with
neither runs on CPUs. The node types
of ray_cluster.yaml carry custom resources (`fastslow_gpu`, `fastslow_cpu`); a stage asks for a sliver
of its node type's resource where the cluster has it, which keeps GPU stages on GPU nodes and the
retriever shards off them.
"""

from __future__ import annotations

from fastslow.devices import AUTO, check_setting  # noqa: F401  (the settings these functions resolve)

GPU_NODE = "fastslow_gpu"  # custom resource of ray_cluster.yaml's GPU worker type
CPU_NODE = "fastslow_cpu"  # ... and of its CPU worker type
SLIVER = 0.001  # how much of a node-type resource one actor takes: placement only, no limit on count


def cluster_resources() -> dict:
    """Resources of the nodes up now, and of one node of each type the autoscaler can launch (per resource, the
    larger): what a stage may ask for and get, possibly after the autoscaler has added a node."""
    import ray

    if not ray.is_initialized():
        return {}
    from cluster.node_types import launchable_node_types

    have = dict(ray.cluster_resources())
    for resources in (launchable_node_types(ray.get_runtime_context().gcs_address) or {}).values():
        for key, value in resources.items():
            have[key] = max(have.get(key, 0.0), value)
    return have


def cluster_gpus(resources: dict | None = None) -> float:
    return float((cluster_resources() if resources is None else resources).get("GPU", 0))


def use_gpu(setting, resources: dict | None = None) -> bool:
    """Ray Train's use_gpu: the setting, or with `auto` whether the cluster has a GPU."""
    return cluster_gpus(resources) > 0 if setting == AUTO else bool(setting)


def gpus_per_actor(setting, resources: dict | None = None, auto_share: float = 1.0) -> float:
    """GPUs one actor asks for: the number given, or with `auto` `auto_share` where the cluster has GPUs, else 0."""
    if setting != AUTO:
        return float(setting)
    return auto_share if cluster_gpus(resources) > 0 else 0.0


def embedding_actors(setting, gpus_each: float, resources: dict | None = None) -> int:
    """Actors of indexing's embedding pool: the number given, or with `auto` one per GPU share where actors take
    GPUs (`gpus_each`), else one per CPU of the cluster: each actor runs one torch thread, and with no separate
    CPU node type Ray Data runs the decode step inside the actors, so on a CPU machine every core decodes and
    encodes (one actor holding every core would leave the cores idle while it decodes)."""
    if setting != AUTO:
        return int(setting)
    have = cluster_resources() if resources is None else resources
    if gpus_each > 0:
        return max(1, int(have.get("GPU", 0) // gpus_each))
    return max(1, int(have.get("CPU", 1)))


def actor_options(num_cpus: float, num_gpus: float, resources: dict | None = None) -> dict:
    """Ray actor options of a stage: its CPUs and GPUs, plus its node type's resource where the cluster has it."""
    have = cluster_resources() if resources is None else resources
    node = GPU_NODE if num_gpus > 0 else CPU_NODE
    options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if node in have:
        options["resources"] = {node: SLIVER}
    return options


def cpu_task_options(resources: dict | None = None) -> dict:
    """Ray options of a CPU task (decoding, writing): the CPU node type's resource where the cluster has it, which
    keeps such tasks off GPU nodes, whose CPUs feed their GPUs."""
    have = cluster_resources() if resources is None else resources
    return {"resources": {CPU_NODE: SLIVER}} if CPU_NODE in have else {}


def worker_resources(cpus: float, gpu: bool, resources: dict | None = None) -> dict:
    """Ray Train's resources_per_worker: CPUs, plus a sliver of the GPU node type's resource where it exists."""
    have = cluster_resources() if resources is None else resources
    return {"CPU": cpus, **({GPU_NODE: SLIVER} if gpu and GPU_NODE in have else {})}
