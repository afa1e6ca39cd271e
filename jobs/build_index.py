"""Index a collection as a Ray job: Ray Data decodes and embeds it partition by partition, FAISS indexes
it in S shards, and the version is published behind CURRENT.

    ray job submit --working-dir . -- python -m jobs.build_index --data s3://bucket/photos/ \\
        --checkpoint s3://bucket/runs/fast/checkpoint --root s3://bucket/index index.shards=4

Resumable: the version name is derived from the model, the items and the settings, each
partition's output is written last and in one piece, and a resubmitted job skips the
partitions already written, so a build killed at any point finishes the same index. Every item
read ends up indexed or in the version's errors.jsonl with its id and reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time

import numpy as np

from fastslow import storage
from fastslow.config import IndexRunConfig
from fastslow.data.types import ReadReport
from fastslow.errors import FastslowError, user_error
from fastslow.log import get_logger

log = get_logger(__name__)

PLAN = "plan.json"


def index_rows(cfg: IndexRunConfig) -> tuple[list[dict], ReadReport]:
    """Every sample of the dataset as a row, sorted by id; duplicate ids after the first are reported."""
    from fastslow.data.registry import open_dataset

    reader = open_dataset(cfg.data.path, format=cfg.data.format, media_root=cfg.data.media_root)
    report = ReadReport(source=f"{reader.source} [{cfg.split or 'all'}]")
    rows, seen = [], set()
    for s in reader.samples(cfg.split, report):
        if s.id in seen:
            report.skip(s.id, s.uri, "duplicate id (the first item with this id is indexed)")
            continue
        if cfg.data.media and s.media != cfg.data.media:
            report.skip(s.id, s.uri, f"not {'an image' if cfg.data.media == 'image' else 'a video'}")
            continue
        seen.add(s.id)
        rows.append({"id": s.id, "media": s.media, "uri": s.uri, "captions": list(s.captions)})
    rows.sort(key=lambda r: r["id"])
    return rows, report


def collection_root(cfg: IndexRunConfig) -> str:
    """Where the collection's media lie: data.media_root, else the dataset's folder (absolute, or an s3:// prefix)."""
    from jobs.training import absolute

    if cfg.data.media_root:
        return absolute(cfg.data.media_root)
    path = absolute(cfg.data.path)
    return path if storage.is_dir(path) else storage.parent(path)


def plan_partitions(rows: list[dict], size: int) -> list[list[dict]]:
    """Images then videos (a partition holds one media type), each in id order, in slices of `size`."""
    plan = []
    for media in ("image", "video"):
        of_media = [r for r in rows if r["media"] == media]
        plan += [of_media[i : i + size] for i in range(0, len(of_media), size)]
    return plan


def version_name(model_sha: str, rows: list[dict], cfg: IndexRunConfig) -> str:
    """A name fixed by what the build depends on: a resubmitted build finds its own partitions."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": model_sha, "index": vars(cfg.index), "frames": cfg.data.num_frames,
                         "partition_size": cfg.embed.partition_size}, sort_keys=True).encode())
    for r in rows:
        h.update(f"{r['id']}\t{r['uri']}\n".encode())
    return "v-" + h.hexdigest()[:12]


def _check_plan(build_dir: str, plan: list[list[dict]]) -> None:
    """Write the build's plan, or check it is the one already there (a build dir is never reused for another)."""
    text = json.dumps([[r["id"] for r in part] for part in plan])
    uri = storage.join(build_dir, PLAN)
    if storage.exists(uri):
        if storage.read_text(uri) != text:
            raise FastslowError(f"{build_dir}: holds a build of other items; choose another version name")
        return
    storage.write_text(uri, text)


def _run_pipeline(pending: list[int], plan: list[list[dict]], cfg: IndexRunConfig, build_dir: str,
                  image_size: int) -> None:
    import ray.data

    from actors.embed import FastEmbedder, decode_partition, write_partition
    from cluster.resources import actor_options, gpus_per_actor
    from fastslow.data.decode import DecodeConfig

    # A task's own exception, not Ray Data's UserCodeException (whose cause does not survive the trip back).
    ray.data.DataContext.get_current().raise_original_map_exception = True
    items = [{"partition": p, "items": json.dumps(plan[p])} for p in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(decode_partition, batch_size=1,
                        fn_kwargs={"cfg": DecodeConfig(image_size=image_size, num_frames=cfg.data.num_frames)})
    options = actor_options(1.0, gpus_per_actor(cfg.embed.num_gpus))
    ds = ds.map_batches(FastEmbedder, batch_size=1, num_cpus=options["num_cpus"], num_gpus=options["num_gpus"] or None,
                        resources=options.get("resources"),
                        fn_constructor_kwargs={"checkpoint": cfg.checkpoint, "batch_size": cfg.embed.batch_size},
                        compute=ray.data.ActorPoolStrategy(size=cfg.embed.concurrency))
    ds = ds.map_batches(write_partition, batch_size=1, fn_kwargs={"build_dir": build_dir})
    try:
        for _ in ds.iter_batches(batch_size=None):
            pass
    except Exception as e:
        # A user's error (an unreachable store, a bad checkpoint) raised in a Ray Data task arrives wrapped in
        # Ray's exceptions and their remote tracebacks: give its one line, and say the work done is kept.
        cause = user_error(e)
        if cause is None:
            raise
        first_line = str(cause).splitlines()[0]  # Ray Data appends its retry advice to the message
        raise FastslowError(f"{first_line}. The partitions written so far are kept: submit the same job again to "
                            f"resume") from None


def _collect(plan: list[list[dict]], build_dir: str):
    """All partitions' (ids, vectors, metadata table, errors)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from actors.embed import partition_files

    tables, errors = [], []
    for p in range(len(plan)):
        emb_uri, err_uri = partition_files(build_dir, p)
        tables.append(pq.read_table(io.BytesIO(storage.read_bytes(emb_uri))))
        errors += [json.loads(line) for line in storage.read_text(err_uri).splitlines() if line.strip()]
    table = pa.concat_tables(tables)
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    return table.column("id").to_pylist(), vectors, table.drop_columns(["embedding"]), errors


def run_build(cfg: IndexRunConfig, address: str | None = None) -> dict:
    """Embed, index, publish; returns the summary (items read = indexed + errors)."""
    from actors.embed import partition_files
    from cluster.connect import connect
    from fastslow.index.publish import current_version, publish, version_dir, write_version
    from fastslow.index.shards import build_shards
    from fastslow.models.checkpoint import read_manifest as read_checkpoint
    from jobs.training import absolute

    started = time.time()
    if not cfg.checkpoint:
        raise FastslowError("checkpoint is not set: pass --checkpoint PATH, the Fast checkpoint that embeds")
    if not cfg.data.path:
        raise FastslowError("data.path is not set: pass --data PATH (a dataset, or a folder/prefix of media)")
    cfg.checkpoint, cfg.data.path, cfg.root = absolute(cfg.checkpoint), absolute(cfg.data.path), absolute(cfg.root)
    model = read_checkpoint(cfg.checkpoint)
    if model["model_type"] != "fast":
        raise FastslowError(f"{cfg.checkpoint}: expected a Fast checkpoint, found a {model['model_type']} one")
    rows, report = index_rows(cfg)
    if not rows:
        raise FastslowError(f"{cfg.data.path}: no items to index ({report.summary()})")
    version = cfg.version or version_name(model["weights_sha256"], rows, cfg)
    build_dir = storage.join(cfg.root, "builds", version)
    plan = plan_partitions(rows, cfg.embed.partition_size)
    published = storage.exists(storage.join(version_dir(cfg.root, version), "manifest.json"))
    if not published:
        _check_plan(build_dir, plan)
        pending = [p for p in range(len(plan)) if not storage.exists(partition_files(build_dir, p)[0])]
        log.info("version %s: %d partitions, %d to do", version, len(plan), len(pending))
        if pending:
            connect(address)
            _run_pipeline(pending, plan, cfg, build_dir, model["config"]["vision"]["image_size"])
    ids, vectors, metadata, errors = _collect(plan, build_dir)
    errors = [{"id": p.id, "uri": p.uri, "reason": p.reason} for p in report.problems] + errors
    if report.read != len(ids) + len(errors):
        raise RuntimeError(f"lost items: read {report.read} != indexed {len(ids)} + errors {len(errors)}")
    if not published:
        storage.write_text(storage.join(version_dir(cfg.root, version), "errors.jsonl"),
                           "".join(json.dumps(e) + "\n" for e in errors))
        if not ids:
            raise FastslowError(f"{cfg.data.path}: no item could be indexed (see the errors file)")
        indexes, shard_rows = build_shards(ids, vectors, cfg.index)
        # num_frames: how videos were sampled, so the re-ranker decodes candidates the same way.
        # collection_root: the search app serves an item's media only from under it.
        identity = {"checkpoint": cfg.checkpoint, "weights_sha256": model["weights_sha256"],
                    "config": model["config"], "num_frames": cfg.data.num_frames,
                    "collection_root": collection_root(cfg)}
        write_version(cfg.root, version, indexes, shard_rows, metadata, cfg.index, identity)
    if not storage.exists(storage.join(cfg.root, "CURRENT")) or current_version(cfg.root) != version:
        publish(cfg.root, version)
    seconds = time.time() - started
    return {"version": version, "root": cfg.root, "read": report.read, "indexed": len(ids), "errors": len(errors),
            "errors_file": storage.join(version_dir(cfg.root, version), "errors.jsonl"), "shards": cfg.index.shards,
            "seconds": round(seconds, 1), "items_per_s": round(report.read / max(seconds, 1e-9), 1)}


def main(argv: list[str] | None = None) -> int:
    from jobs.cli import job_main

    return job_main(
        "python -m jobs.build_index", __doc__, IndexRunConfig,
        {"data": ("data.path", "a dataset, or a folder / s3:// prefix of images and videos"),
         "checkpoint": ("checkpoint", "the Fast checkpoint that embeds the items"),
         "root": ("root", "where versions and CURRENT live (local or s3://)")},
        run_build, argv,
        epilog="Settings: --config YAML (configs/index_*.yaml) plus KEY=VALUE overrides, e.g. index.shards=4 "
               "index.factory=IVF1024,PQ32 embed.concurrency=4 embed.num_gpus=auto embed.partition_size=512.",
        headline=lambda s: f"indexed {s['indexed']} of {s['read']} items read ({s['errors']} errors, listed in "
                           f"{s['errors_file']}) in {s['seconds']} s, {s['items_per_s']} items/s; "
                           f"version {s['version']} is live under {s['root']}")


if __name__ == "__main__":
    sys.exit(main())
