"""GPU or CPU from one config: what each stage asks the cluster for, mixed precision only on a GPU, FAISS on the
CPU where faiss-gpu or a GPU is missing."""

import os

import numpy as np
import pytest
import torch

from cluster.resources import actor_options, check_setting, embedding_actors, gpus_per_actor, use_gpu, worker_resources
from fastslow.config import EmbedJobConfig, FastRunConfig, IndexRunConfig, JobConfig, load_config
from fastslow.devices import autocast
from fastslow.errors import FastslowError

LAPTOP = {"CPU": 2.0, "memory": 1e10}
GPU_CLUSTER = {"CPU": 64.0, "GPU": 4.0, "fastslow_gpu": 4.0, "fastslow_cpu": 8.0}


def test_auto_asks_for_gpus_only_where_the_cluster_has_them():
    assert not use_gpu("auto", LAPTOP) and use_gpu("auto", GPU_CLUSTER)
    assert use_gpu(True, LAPTOP) and not use_gpu(False, GPU_CLUSTER)  # an explicit setting wins
    assert gpus_per_actor("auto", LAPTOP) == 0 and gpus_per_actor("auto", GPU_CLUSTER) == 1
    assert gpus_per_actor(0.5, LAPTOP) == 0.5


def test_the_embedding_pool_has_an_actor_per_gpu_else_per_cpu_unless_a_number_is_given():
    assert EmbedJobConfig().concurrency == "auto"
    assert embedding_actors("auto", 0, LAPTOP) == 2  # CPUs only: one single-threaded actor per core
    assert embedding_actors("auto", 1.0, GPU_CLUSTER) == 4 and embedding_actors("auto", 0.5, GPU_CLUSTER) == 8
    assert embedding_actors("auto", 0, {}) == 1  # no Ray resources known: one
    assert embedding_actors(3, 0, LAPTOP) == 3 and embedding_actors(1, 1.0, GPU_CLUSTER) == 1
    assert load_config(IndexRunConfig, None, ["embed.concurrency=3"]).embed.concurrency == 3
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(FastslowError, match="embed.concurrency"):
            EmbedJobConfig(concurrency=bad)


def test_stages_land_on_their_node_type_where_the_cluster_has_one():
    assert actor_options(0.5, 1.0, GPU_CLUSTER) == {"num_cpus": 0.5, "num_gpus": 1.0,
                                                    "resources": {"fastslow_gpu": 0.001}}
    assert actor_options(0.25, 0, GPU_CLUSTER)["resources"] == {"fastslow_cpu": 0.001}
    assert actor_options(0.25, 0, LAPTOP) == {"num_cpus": 0.25, "num_gpus": 0}  # no custom resources to ask for
    assert worker_resources(1.0, True, GPU_CLUSTER) == {"CPU": 1.0, "fastslow_gpu": 0.001}
    assert worker_resources(1.0, False, GPU_CLUSTER) == {"CPU": 1.0}


def test_gpu_settings_default_to_auto_and_refuse_nonsense():
    assert JobConfig().use_gpu == "auto" and EmbedJobConfig().num_gpus == "auto"
    assert load_config(FastRunConfig, None, ["job.use_gpu=true"]).job.use_gpu is True
    with pytest.raises(FastslowError, match="job.use_gpu"):
        load_config(FastRunConfig, None, ["job.use_gpu=sometimes"])
    with pytest.raises(FastslowError, match="embed.num_gpus"):
        EmbedJobConfig(num_gpus=-1)
    with pytest.raises(FastslowError, match="reranker_gpus"):
        check_setting("serve: reranker_gpus", "many")


def test_mixed_precision_only_on_a_gpu():
    a = torch.randn(4, 8)
    with autocast("cpu"):
        assert (a @ a.T).dtype == torch.float32  # the CPU keeps float32: bf16 there is slower, and less exact
    if torch.cuda.is_available():
        with autocast("cuda"):
            assert (a.cuda() @ a.cuda().T).dtype == torch.bfloat16


def test_faiss_stays_on_the_cpu_without_faiss_gpu_or_a_gpu():
    import faiss

    from fastslow.index.shards import on_gpu, search_params

    vectors = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    index = faiss.index_factory(16, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    moved, resources = on_gpu(index, nprobe=4)
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        assert moved is index and resources is None
    exact = faiss.IndexFlatIP(16)
    exact.add(vectors)
    _, want = exact.search(vectors[:20], 1)
    _, got = moved.search(vectors[:20], 1, params=search_params(index, nprobe=8) if resources is None else None)
    assert (got == want).all()


def test_relative_paths_land_under_the_cluster_storage_root(monkeypatch, tmp_path):
    from cluster.connect import storage_path

    monkeypatch.delenv("FASTSLOW_STORAGE_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert storage_path("runs/fast") == str(tmp_path / "runs" / "fast")
    monkeypatch.setenv("FASTSLOW_STORAGE_ROOT", "s3://bucket/fastslow")
    assert storage_path("runs/fast") == "s3://bucket/fastslow/runs/fast"
    assert storage_path("/data/x") == "/data/x" and storage_path("s3://other/y") == "s3://other/y"


def test_auto_counts_the_node_types_the_autoscaler_can_launch(monkeypatch):
    """ray_cluster.yaml starts GPU workers at 0: `auto` must still ask for a GPU because the autoscaler can add one,
    and a cluster with no GPU node type runs on CPUs."""
    import yaml

    import cluster.node_types as node_types
    import cluster.resources as resources
    from cluster.node_types import node_types_from_config

    with open(os.path.join(os.path.dirname(__file__), "..", "ray_cluster.yaml")) as f:
        launcher = yaml.safe_load(f)
    types = node_types_from_config(launcher)
    assert set(types) == {"gpu_worker", "cpu_worker"}  # the head (max_workers 0) launches nothing
    assert types["gpu_worker"]["fastslow_gpu"] == 1 and "fastslow_gpu" not in types["cpu_worker"]

    # No node up but the head; what the autoscaler of each config can add decides.
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0.0, "node:__internal_head__": 1.0})
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("C", (), {"gcs_address": "head:6379"})())
    for launchable, gpu in (({"gpu_worker": {"CPU": 8.0, "GPU": 1.0, "fastslow_gpu": 1.0},
                              "cpu_worker": {"CPU": 8.0, "fastslow_cpu": 1.0}}, True),
                            ({"cpu_worker": {"CPU": 8.0, "fastslow_cpu": 1.0}}, False),
                            (None, False)):
        monkeypatch.setattr(node_types, "launchable_node_types", lambda address, t=launchable: t)
        have = resources.cluster_resources()
        assert use_gpu("auto", have) is gpu and gpus_per_actor("auto", have) == float(gpu)
        assert actor_options(1.0, gpus_per_actor("auto", have), have).get("resources") == (
            {"fastslow_gpu": 0.001} if gpu else {"fastslow_cpu": 0.001} if launchable else None)
