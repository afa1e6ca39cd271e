"""Index a collection as a Ray job: the core's index build (`fastslow.index.build`) with its partitions spread over
the cluster by Ray Data (decode tasks, a pool of Fast-embedding actors, write tasks), then the core's finish:
FAISS shards filled in parallel Ray tasks (one per shard, no process holding every vector), the version written
and published behind CURRENT.

    ray job submit --working-dir . -- python -m jobs.build_index --data s3://bucket/photos/ \\
        --checkpoint s3://bucket/runs/fast/checkpoint --root s3://bucket/index index.shards=4

Resumable: the version name is derived from the model, the items and the settings, each
partition's output is written last and in one piece, and a resubmitted job skips the
partitions already written, so a build killed at any point finishes the same index. Every item
read ends up indexed or in the version's errors.jsonl with its id and reason.
"""

from __future__ import annotations

import json

from fastslow.config import IndexRunConfig
from fastslow.errors import FastslowError, user_error
from fastslow.index.build import IndexBuild
from fastslow.log import get_logger

log = get_logger(__name__)

def _run_pipeline(build: IndexBuild, pending: list[int]) -> None:
    """The pending partitions through Ray Data: the core's decode, embed and write steps of each."""
    import ray.data

    from actors.index_stages import FastEmbedder, PartitionWriter, decode_stage
    from cluster.resources import actor_options, cpu_task_options, embedding_actors, gpus_per_actor
    from fastslow.index.shard_partition import ChunkTracker

    cfg = build.cfg
    # A task's own exception, not Ray Data's UserCodeException (whose cause does not survive the trip back).
    ray.data.DataContext.get_current().raise_original_map_exception = True
    items = [{"partition": p, "items": json.dumps(build.plan[p])} for p in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    cpu_tasks = cpu_task_options()
    # Decoding asks for the CPUs an embedding actor does: where there is no CPU node type, Ray Data then runs it
    # inside the actors (fused), so fractional actors beside a Serve app never wait for a whole free CPU.
    ds = ds.map_batches(decode_stage, batch_size=1, fn_kwargs={"cfg": build.decode_config()},
                        num_cpus=cfg.embed.cpus_per_actor, **cpu_tasks)
    gpus = gpus_per_actor(cfg.embed.num_gpus)
    options = actor_options(cfg.embed.cpus_per_actor, gpus)
    actors = embedding_actors(cfg.embed.concurrency, gpus)
    log.info("embedding in %d actor(s), %s GPU each", actors, gpus)
    ds = ds.map_batches(FastEmbedder, batch_size=1, num_cpus=options["num_cpus"], num_gpus=options["num_gpus"] or None,
                        resources=options.get("resources"),
                        fn_constructor_kwargs={"checkpoint": cfg.checkpoint, "batch_size": cfg.embed.batch_size},
                        compute=ray.data.ActorPoolStrategy(size=actors))
    # Writing is I/O, and with `auto` the actors hold every CPU: a writer asking for one would wait for the pool.
    # A write takes a fraction of an embedding's time: up to one writer per two embedding actors, added by Ray Data
    # only when partitions wait to be written (each new one is a process started).
    ds = ds.map_batches(PartitionWriter, batch_size=1, fn_constructor_kwargs={"build_dir": build.build_dir}, num_cpus=0,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors // 2)), **cpu_tasks)
    tracker = ChunkTracker(build.build_dir)  # a shard partition is done once all its chunks are written
    try:
        for batch in ds.iter_batches(batch_size=None):
            for partition, chunk, chunks in zip(batch["partition"], batch["chunk"], batch["chunks"]):
                tracker.written(int(partition), int(chunk), int(chunks))
    except Exception as e:
        # A user's error (an unreachable store, a bad checkpoint) raised in a Ray Data task arrives wrapped in
        # Ray's exceptions and their remote tracebacks: give its one line, and say the work done is kept.
        cause = user_error(e)
        if cause is None:
            raise
        first_line = str(cause).splitlines()[0]  # Ray Data appends its retry advice to the message
        raise FastslowError(f"{first_line}. The partitions written so far are kept: submit the same job again to "
                            f"resume") from None


def _shard_tasks(fn, calls: list[dict]) -> list:
    """`fn(**call)` for each call in parallel Ray tasks on CPU nodes: the core's fill_shard, one task per shard
    (fastslow.index.assemble), each reading the partitions itself; the shared arguments are put in the object
    store once. A failed task is retried; past that its error ends the job in one line (the partitions are kept,
    and a resubmitted job assembles again)."""
    import ray

    from cluster.resources import cpu_task_options

    task = ray.remote(fn).options(num_cpus=1, max_retries=2, **cpu_task_options())
    shared = {k: ray.put(calls[0][k]) for k in ("layout", "trained", "queries")}
    try:
        return ray.get([task.remote(**{**c, **shared}) for c in calls])
    except Exception as e:
        cause = user_error(e)
        if cause is None:
            raise
        raise FastslowError(f"{str(cause).splitlines()[0]}. The partitions written so far are kept: submit the "
                            f"same job again to resume") from None


def run_build(cfg: IndexRunConfig, address: str | None = None) -> dict:
    """Embed (on the Ray cluster at `address`, else RAY_ADDRESS, else a local Ray), index shard by shard in Ray
    tasks, publish; returns the summary (items read = indexed + errors). Relative paths are resolved as a job's
    are (`storage_path`)."""
    from cluster.connect import connect, storage_path

    build = IndexBuild.prepare(cfg, resolve=storage_path)
    if build.published:
        return build.finish()
    connect(address)
    pending = build.pending()
    if pending:
        _run_pipeline(build, pending)
    return build.finish(run=_shard_tasks)
