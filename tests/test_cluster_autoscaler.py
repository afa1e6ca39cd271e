"""GPU nodes that the autoscaler actually adds: on a cluster whose GPU type starts at 0 nodes (as ray_cluster.yaml's),
the index job with its GPU setting left `auto` asks for a GPU because the autoscaler can launch one
(cluster/node_types.py), the autoscaler adds a GPU-type node, the embedding runs there, the job finishes, and the
node goes away once idle. Ray's fake multi-node provider launches the nodes on 127.0.0.1 (tests/multinode.py)."""

import os

import pytest
from helpers import INDEX_SETTINGS, job_id, job_submitter, job_summary, wait_for
from multinode import alive_nodes_with, node_kinds_of_tasks, node_resources, start_autoscaling_cluster, wait_until

from cluster.resources import CPU_NODE, GPU_NODE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(360)]


def test_index_job_makes_the_autoscaler_add_a_gpu_node_that_goes_away_when_idle(tiny_corpus, tiny_fast_checkpoint,
                                                                                 tmp_path):
    import ray

    multi = start_autoscaling_cluster(idle_timeout_s=6)
    ray.init(address=multi.address, log_to_driver=False)
    submit, stop_all = job_submitter(multi.dashboard)
    try:
        wait_until(lambda: alive_nodes_with(CPU_NODE), 90, what="the CPU worker the autoscaler keeps (min_workers 1)")
        assert alive_nodes_with(GPU_NODE) == [] and not ray.cluster_resources().get("GPU")

        job = job_id("autoscaled-index")
        client = submit(job, "jobs.build_index", "--data", os.path.join(tiny_corpus, "images"), "--checkpoint",
                        tiny_fast_checkpoint, "--root", str(tmp_path / "index"), "split=test", *INDEX_SETTINGS)
        status, logs = wait_for(client, job, timeout=240)
        assert status == "SUCCEEDED", logs[-3000:]
        summary = job_summary(logs)
        assert summary["read"] == summary["indexed"] == 20

        added = [node for node, total in node_resources(multi).items() if total.get(GPU_NODE)]  # alive or gone since
        assert len(added) == 1, node_resources(multi)
        assert node_kinds_of_tasks(multi, "FastEmbedder") == ["gpu"]
        wait_until(lambda: not alive_nodes_with(GPU_NODE), 120, what="the idle GPU node removed by the autoscaler")
    finally:
        stop_all()
        ray.shutdown()
        multi.shutdown()
