"""Each stage on its node type, on several Ray nodes on 127.0.0.1 shaped like ray_cluster.yaml (a head that runs no
work, a "gpu" type marked by `fastslow_gpu` and a declared GPU, two "cpu" nodes marked by `fastslow_cpu`): the index
job's embedding actors on the GPU type and its decoding and writing on CPU nodes, the Serve app's shard retrievers on
CPU nodes and its re-ranker on the GPU type, every GPU setting left `auto`. (Training's two workers on two nodes:
tests/test_faults_nodes.py, which also removes one of those nodes.)"""

import os

import pytest
from helpers import INDEX_SETTINGS, job_id, job_submitter, job_summary, wait_for
from multinode import node_kinds_of_actors, node_kinds_of_tasks, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def multi():
    import ray

    cluster = start_cluster(["gpu", "cpu", "cpu"])
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def submit(multi):
    submit, stop_all = job_submitter(multi.dashboard)
    yield submit
    stop_all()


@pytest.fixture(scope="module")
def placed_index(multi, submit, tiny_corpus, tiny_fast_checkpoint, tmp_path_factory):
    """The tiny test images indexed by the index job on the cluster; (summary, index root)."""
    root = str(tmp_path_factory.mktemp("placed") / "index")
    job = job_id("placed-index")
    client = submit(job, "jobs.build_index", "--data", os.path.join(tiny_corpus, "images"), "--checkpoint",
                    tiny_fast_checkpoint, "--root", root, "split=test", *INDEX_SETTINGS)
    status, logs = wait_for(client, job, timeout=240)
    assert status == "SUCCEEDED", logs[-3000:]
    return job_summary(logs), root


def test_index_job_embeds_on_the_gpu_type_and_decodes_on_cpu_nodes(multi, placed_index):
    summary, _ = placed_index
    assert summary["read"] == summary["indexed"] == 20
    assert node_kinds_of_tasks(multi, "decode_stage") == ["cpu"]
    assert node_kinds_of_tasks(multi, "write_stage") == ["cpu"]
    embedders = node_kinds_of_tasks(multi, "FastEmbedder")
    assert embedders == ["gpu"], embedders


def test_serve_puts_retrievers_on_cpu_nodes_and_the_reranker_on_the_gpu_type(multi, placed_index,
                                                                            tiny_fast_checkpoint,
                                                                            tiny_slow_checkpoint):
    from serve_helpers import post
    from serve_app.launch import base_url, deploy, load_serve_config, wait_ready, with_settings

    from cluster.connect import free_port

    _, root = placed_index
    config = with_settings(load_serve_config(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                          "serve_synth.yaml")),
                           args={"index_root": root, "fast_checkpoint": tiny_fast_checkpoint,
                                 "slow_checkpoint": tiny_slow_checkpoint}, port=free_port())
    deploy(config, multi.dashboard)
    try:
        url = base_url(config)
        wait_ready(url, timeout=240)
        status, answer = post(url, {"query": "a red circle", "k": 5, "rerank": True, "rerank_k": 5})
        assert status == 200 and len(answer["results"]) == 5, answer
        assert all(hit.get("slow_score") is not None for hit in answer["results"]), answer
        assert node_kinds_of_actors(multi, "ShardRetriever") == ["cpu"] * 3
        assert node_kinds_of_actors(multi, "SlowReranker") == ["gpu"]
    finally:
        from ray import serve

        serve.shutdown()
