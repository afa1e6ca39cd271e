"""Fault suite, whole nodes: a Ray node (its raylet and every worker on it, as when a machine is lost) removed from a
multi-node cluster on 127.0.0.1 shaped like ray_cluster.yaml (tests/multinode.py: a head that runs no work, a "gpu"
type marked by `fastslow_gpu` and a declared GPU, "cpu" nodes marked by `fastslow_cpu`), in the middle of each
stage's work:

- the index job, a CPU node removed while partitions are written: the job finishes or fails in one line, and
  (resubmitted if it failed) the index equals a build with no fault, every item once;
- the Serve app under a stream of queries, the CPU node of a shard retriever removed: every answer a 200 (partial,
  and saying so, while the shard is gone), Serve starts the replica again on the remaining CPU node, answers whole;
- a two-worker training run, one worker's node removed after a checkpoint (and a CPU node added in its place): Ray
  Train restarts the worker group and the run resumes from the last checkpoint, not from step 0.

Each test also checks where the stages ran (embedding on the GPU type; decoding, writing, filling the index shards,
retrievers on CPU nodes; the re-ranker on the GPU type; training's two workers on two nodes), GPU settings left
`auto`. One cluster for the module; each test first brings it to the shape it needs (`_shape`), so a test that removed a
node leaves nothing behind that the next one depends on.
"""

import json
import os
import re
import threading
import time

import numpy as np
import pytest
from helpers import (TINY_FAST, build, index_overrides, index_vectors, job_id, job_status, job_submitter, job_summary,
                     wait_for)
from multinode import node_kinds_of_tasks, start_cluster, wait_until

from fastslow import storage
from fastslow.config import IndexRunConfig, load_config

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# mixed_collection (25 images, 5 videos, a pdf reported at read) in partitions of 2: 13 + 3 = 16 partitions, so the
# job is still writing them when the node goes.
PARTITION_SIZE = 2
PARTITIONS = 16
ITEMS_IN, INDEXED, REPORTED = 31, 28, 3
INDEX_EXTRA = [f"embed.partition_size={PARTITION_SIZE}"]


@pytest.fixture(scope="module")
def multi():
    import ray

    cluster = start_cluster(["gpu", "cpu", "cpu"])
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def submit(multi):
    import subprocess

    plain, stop_all = job_submitter(multi.dashboard)

    def submit(*args, **kwargs):
        try:
            return plain(*args, **kwargs)
        except subprocess.CalledProcessError as e:  # say why `ray job submit` refused
            raise AssertionError(f"ray job submit failed: {(e.stderr or b'').decode()[-3000:]}") from None

    yield submit
    stop_all()


def _shape(multi, gpu: int, cpu: int) -> None:
    """Bring the cluster to `gpu` GPU-type and `cpu` CPU-type worker nodes (adding or removing nodes)."""
    for kind, want in (("gpu", gpu), ("cpu", cpu)):
        have = [n for n, k in multi.nodes.items() if k == kind]
        for node in have[want:]:
            multi.remove(node)
        for _ in range(want - len(have)):
            multi.add(kind)


def _alive(multi, class_part: str) -> list:
    """Live actors whose class name contains `class_part` (Ray's state API)."""
    from ray.util.state import list_actors

    return [a for a in list_actors(address=multi.address, filters=[("state", "=", "ALIVE")], limit=1000, detail=True)
            if class_part in (a.class_name or "")]


# --- the index job ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_index(mixed_collection, tiny_fast_checkpoint, tmp_path_factory):
    """The index of mixed_collection with this module's settings, built with no fault by the core's local executor
    (in this process, no Ray: the same version, rows and vectors as the Ray job's, tests/test_jobs_index.py);
    (root, summary). The Serve test serves it."""
    from fastslow.index.build import build_index

    root = str(tmp_path_factory.mktemp("nodes-reference") / "index")
    cfg = load_config(IndexRunConfig, None, [*index_overrides(mixed_collection, tiny_fast_checkpoint, root),
                                             *INDEX_EXTRA])
    summary = build_index(cfg)
    assert (summary["read"], summary["indexed"], summary["errors"]) == (ITEMS_IN, INDEXED, REPORTED)
    return root, summary


def _written(root: str, version: str) -> int:
    """Partitions whose embeddings file (a partition's last file) is written in `root`'s build of `version`."""
    return len(storage.list_files(storage.join(root, "builds", version, "embeddings"), suffixes=(".parquet",)))


def _error_ids(summary: dict) -> list[str]:
    return sorted(json.loads(line)["id"] for line in storage.read_text(summary["errors_file"]).splitlines())


def _busiest_cpu_node(multi) -> tuple[str, int]:
    """The CPU node running the most of the index job's tasks now (decode, write); (its id, how many)."""
    from ray.util.state import list_tasks

    running = {}
    for t in list_tasks(address=multi.address, filters=[("state", "=", "RUNNING")], limit=1000):
        if t.node_id and multi.nodes.get(t.node_id) == "cpu":
            running[t.node_id] = running.get(t.node_id, 0) + 1
    cpu_nodes = [n for n, k in multi.nodes.items() if k == "cpu"]
    node = max(cpu_nodes, key=lambda n: running.get(n, 0))
    return node, running.get(node, 0)


@pytest.mark.timeout(420)
def test_index_job_with_a_cpu_node_removed_mid_job_gives_the_same_index(multi, submit, reference_index,
                                                                        mixed_collection, tiny_fast_checkpoint,
                                                                        tmp_path, fault_record):
    _shape(multi, gpu=1, cpu=2)
    ref_root, ref = reference_index
    version, root = ref["version"], str(tmp_path / "index")
    first = job_id("node-lost-index")
    # One embedding actor (on the GPU-type node): partitions are written one after another, over several seconds.
    client = build(submit, first, mixed_collection, tiny_fast_checkpoint, root, *INDEX_EXTRA, "embed.concurrency=1")
    # Once partitions are being written, the CPU node running a task of the job right then (decode or write),
    # or, late in the job, the one with the most.
    deadline = time.monotonic() + 300
    while True:
        status = job_status(client, first)
        assert time.monotonic() < deadline and status in ("PENDING", "RUNNING"), client.get_job_logs(first)[-3000:]
        written_before = _written(root, version)
        if written_before >= 1:
            victim, tasks_on_it = _busiest_cpu_node(multi)
            if tasks_on_it or written_before >= PARTITIONS // 2:
                break
        time.sleep(0.05)
    multi.remove(victim)
    removed_at = time.monotonic()
    status, logs = wait_for(client, first, timeout=300)
    print(f"index job: CPU node removed after {written_before} of {PARTITIONS} partitions ({tasks_on_it} job tasks "
          f"running on it); the job {status} {time.monotonic() - removed_at:.0f} s later")
    jobs = [first]
    if status == "FAILED":  # in one line, naming the error; the partitions written are kept
        last = logs.strip().splitlines()[-1]
        assert last.startswith("python -m jobs.build_index: error:"), logs[-4000:]
        assert not storage.exists(storage.join(root, "CURRENT"))  # nothing half-built is live
        written = _written(root, version)
        _shape(multi, gpu=1, cpu=2)  # the lost node replaced, then the same job again
        again = job_id("node-lost-index-again")
        build(submit, again, mixed_collection, tiny_fast_checkpoint, root, *INDEX_EXTRA, "embed.concurrency=1")
        status, logs = wait_for(client, again, timeout=300)
        jobs.append(again)
        # Only the partitions the first job had not written were redone.
        assert f"{PARTITIONS} partitions, {PARTITIONS - written} to do" in logs, logs[-4000:]
    assert status == "SUCCEEDED", logs[-4000:]
    summary = job_summary(logs)
    assert summary["version"] == version
    assert (summary["read"], summary["indexed"], summary["errors"]) == (ITEMS_IN, INDEXED, REPORTED)
    # The same index as the build with no fault: the same ids in the same rows, none twice, the same vectors and
    # the same items reported.
    (ids, vectors), (ref_ids, ref_vectors) = index_vectors(root), index_vectors(ref_root)
    assert ids == ref_ids and len(set(ids)) == len(ids) == INDEXED
    np.testing.assert_allclose(vectors, ref_vectors, rtol=1e-5, atol=1e-6)
    assert _error_ids(summary) == _error_ids(ref) and len(_error_ids(summary)) == REPORTED
    # Each stage on its node type, GPU settings left `auto`: embedding on the GPU type, decoding and writing on
    # CPU nodes (the removed one included).
    placement = {name: node_kinds_of_tasks(multi, name)
                 for name in ("decode_stage", "FastEmbedder", "PartitionWriter", "fill_shard")}
    print(f"index job placement: {placement}")
    assert placement == {"decode_stage": ["cpu"], "FastEmbedder": ["gpu"], "PartitionWriter": ["cpu"],
                         "fill_shard": ["cpu"]}, placement
    outcome = "finished" if len(jobs) == 1 else "failed in one line; resubmitted"
    fault_record("fault", f"index job: a CPU node removed after {written_before} of {PARTITIONS} partitions, "
                          f"{tasks_on_it} of the job's tasks running there (job {outcome})", injected=1,
                 nodes_removed=1, items_in=summary["read"], indexed=summary["indexed"], reported=summary["errors"],
                 foreign_ids=0)


# --- the Serve app ------------------------------------------------------------------------------------------------

WHOLE_AGAIN_S = 150  # Serve notices the lost replica and starts it again elsewhere (a new process loads its shard)


@pytest.mark.timeout(420)
def test_a_shard_retrievers_node_removed_under_queries_gives_partial_answers_then_whole(
        multi, reference_index, tiny_fast_checkpoint, tiny_slow_checkpoint, fault_record):
    from ray import serve
    from serve_helpers import post, serve_config

    from fastslow.index.publish import load_version
    from serve_app.launch import deploy, wait_ready

    _shape(multi, gpu=1, cpu=2)
    root, ref = reference_index
    config = serve_config({"root": root, "fast": tiny_fast_checkpoint, "slow": tiny_slow_checkpoint})
    url = f"http://127.0.0.1:{config['http_options']['port']}"
    body = {"query": "a red photo", "k": 5, "rerank": False}
    live = set(load_version(root, ref["version"]).metadata.column("id").to_pylist())
    answers, failures, stop = [], [], threading.Event()

    def stream():
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status, answer = post(url, body, timeout=60)
            except Exception as e:  # noqa: BLE001 - a lost request is what this test looks for
                failures.append(repr(e))
                continue
            (answers.append((sent, answer)) if status == 200 else failures.append((status, answer)))

    deploy(config, multi.dashboard)
    threads = [threading.Thread(target=stream) for _ in range(2)]
    try:
        wait_ready(url, timeout=300, version=ref["version"])
        retrievers = _alive(multi, "ShardRetriever")
        placement = {a.class_name.rpartition(":")[2]: multi.kind_of(a.node_id) for a in
                     _alive(multi, "ServeReplica:fastslow:")}
        print(f"serve placement: {placement}")
        assert sorted(multi.kind_of(a.node_id) for a in retrievers) == ["cpu"] * 3, placement
        assert [multi.kind_of(a.node_id) for a in _alive(multi, "SlowReranker")] == ["gpu"], placement
        # The CPU node to remove: one hosting a retriever but not the ingress (the app's one entry point; losing
        # it is another fault) and, among those, the one with the most retrievers.
        ingress_nodes = {a.node_id for a in _alive(multi, ":Ingress")}
        on_node: dict[str, list[int]] = {}
        for a in retrievers:
            on_node.setdefault(a.node_id, []).append(int(a.class_name.rpartition("ShardRetriever")[2]))
        candidates = [n for n in on_node if n not in ingress_nodes]
        assert candidates, f"every retriever's node also runs the ingress: {placement}"
        victim = max(candidates, key=lambda n: len(on_node[n]))
        lost = sorted(on_node[victim])
        for t in threads:
            t.start()
        time.sleep(2.0)
        assert answers and not failures, failures[:3]
        removed_at = time.monotonic()
        multi.remove(victim)

        def whole_again():
            # Answered after the retrievers came back on the remaining CPU node, and whole.
            moved = [a for a in _alive(multi, "ShardRetriever") if a.node_id in multi.nodes]
            return len(moved) == 3 and any(not a["partial"] for t, a in list(answers)[-4:] if t > removed_at + 1)

        wait_until(whole_again, WHOLE_AGAIN_S, every_s=1.0, what="shard retrievers back and answers whole")
        back_s = time.monotonic() - removed_at
        moved = {a.class_name.rpartition(":")[2]: a.node_id for a in _alive(multi, "ShardRetriever")}
        time.sleep(2.0)  # a few whole answers more
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join(timeout=90)
        serve.shutdown()
    after = [a for t, a in answers if t > removed_at]
    partial = [a for a in after if a["partial"]]
    print(f"serve: {len(answers)} answers, {len(failures)} failed, {len(partial)} partial while ShardRetriever"
          f"{lost} were gone; whole again {back_s:.0f} s after the node went")
    assert not failures, failures[:3]
    assert partial, "no answer showed the shard gone: the removal never reached the app"
    for a in after:  # every answer whole or partial for the lost shards only, and saying so
        failed = sorted(int(s) for s in a["shards"]["failed"])
        assert a["partial"] == bool(failed) and set(failed) <= set(lost), a
        assert sorted(a["shards"]["answered"] + failed) == [0, 1, 2] and len(a["results"]) == 5, a
    assert not after[-1]["partial"]
    foreign = [h["id"] for _, a in answers for h in a["results"]
               if a["index_version"] != ref["version"] or h["id"] not in live]
    assert not foreign, foreign[:5]
    # Started again on the remaining CPU node (the only one left with the CPU type's resource).
    print(f"serve: after the removal: {({name: multi.kind_of(node) for name, node in moved.items()})}")
    assert sorted(multi.kind_of(node) for node in moved.values()) == ["cpu"] * 3 and victim not in moved.values()
    fault_record("fault", f"the CPU node of ShardRetriever{','.join(map(str, lost))} removed under a stream of "
                          f"queries (whole again in {back_s:.0f} s)", injected=1, nodes_removed=1,
                 queries=len(answers) + len(failures), failed_queries=len(failures), hurt_answers=len(partial),
                 foreign_ids=len(foreign))


# --- training -----------------------------------------------------------------------------------------------------

# 40 training items, a global batch of 8 (4 on each of the 2 workers): 5 steps an epoch, 30 steps, a checkpoint
# every 5 (each report about 2 s: the run is still going when the node goes). One CPU a worker: on 1-CPU nodes the
# two workers are on two nodes.
TRAIN_STEPS = 30
TRAIN_ARGS = [*TINY_FAST, "job.num_workers=2", "job.cpus_per_worker=1", "job.use_gpu=false", "train.epochs=6",
              "train.batch_size=8", "job.checkpoint_every=5", "job.log_every=1", "job.max_failures=3"]


def _registered_step(experiment_dir: str) -> int | None:
    """The step of the last checkpoint Ray Train's controller has registered (its checkpoint manager's snapshot,
    written once the checkpoint is in storage): what a restarted worker group gets back."""
    path = os.path.join(experiment_dir, "checkpoint_manager_snapshot.json")
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    latest = state.get("latest_checkpoint_result") or {}
    metrics = latest.get("metrics") or {}
    return int(metrics["step"]) if "step" in metrics else None


@pytest.mark.timeout(420)
def test_training_whose_workers_node_is_removed_resumes_from_the_last_checkpoint(multi, submit, tiny_corpus,
                                                                                 tmp_path, fault_record):
    from fastslow.models.checkpoint import load_checkpoint
    from fastslow.models.fast import FastModel

    _shape(multi, gpu=0, cpu=2)  # only CPU nodes: the two workers on the two of them
    out = str(tmp_path / "fast")
    job = job_id("node-lost-train")
    client = submit(job, "jobs.train_fast", "--data", os.path.join(tiny_corpus, "images"), "--out", out, *TRAIN_ARGS)
    experiment = os.path.join(out, "ray_train", os.path.basename(out))

    def checkpointed():
        status = job_status(client, job)
        assert status in ("PENDING", "RUNNING"), client.get_job_logs(job)[-3000:]
        return _registered_step(experiment)

    registered = wait_until(checkpointed, 300, every_s=0.2, what="a checkpoint registered by Ray Train")
    workers = _alive(multi, "RayTrainWorker")
    kinds = sorted(multi.kind_of(a.node_id) for a in workers)
    assert len(workers) == 2 and len({a.node_id for a in workers}) == 2 and kinds == ["cpu", "cpu"], kinds
    victim = workers[-1].node_id
    multi.remove(victim)
    replacement = multi.add("cpu")
    status, logs = wait_for(client, job, timeout=300)
    assert status == "SUCCEEDED", logs[-4000:]

    model, manifest = load_checkpoint(os.path.join(out, "checkpoint"))
    assert isinstance(model, FastModel)
    trained = manifest["extra"]["train_summary"]
    assert trained["step"] == trained["total_steps"] == TRAIN_STEPS and trained["workers"] == 2, trained
    assert len(trained["resumed_from"]) == 1, trained  # restarted once, from a checkpoint: never from the start
    resumed = trained["resumed_from"][0]
    assert registered <= resumed < TRAIN_STEPS and resumed % 5 == 0, (registered, trained)
    # The restarted workers went on from the step after the checkpoint.
    after = logs[logs.index(f"resumed from step {resumed}/{TRAIN_STEPS}"):]
    first_step = re.search(rf"\bstep (\d+)/{TRAIN_STEPS} epoch", after)  # workers' lines carry Ray's prefix
    assert first_step and int(first_step.group(1)) == resumed + 1, after[:2000]
    with open(os.path.join(out, "history.json")) as f:
        assert [h["step"] for h in json.load(f)] == list(range(1, TRAIN_STEPS + 1))  # every step once
    from ray.util.state import list_actors

    ran_on = [(a.state, "removed" if a.node_id == victim else "replacement" if a.node_id == replacement
               else multi.kind_of(a.node_id)) for a in list_actors(address=multi.address, limit=1000, detail=True)
              if a.class_name == "RayTrainWorker"]
    print(f"training: a worker's node removed once step {registered}'s checkpoint was registered; resumed from "
          f"step {resumed}; workers (state, node): {ran_on}")
    # The restarted group: one worker on the CPU node that stayed, one on the replacement.
    assert sum(node == "removed" for _, node in ran_on) == 1 and any(node == "replacement" for _, node in ran_on)
    fault_record("fault", f"a training worker's node removed after step {registered}'s checkpoint, a CPU node added "
                          f"(resumed from step {resumed})", injected=1, nodes_removed=1, steps=TRAIN_STEPS)
