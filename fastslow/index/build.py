"""The whole index build, Ray-free: rows -> partition plan -> version name -> partitions -> FAISS shards assembled
one by one (fastslow.index.assemble) -> publish, as a pipeline (`IndexBuild`) and a local, sequential executor
(`build_index`).

    build = IndexBuild.prepare(cfg)          # checks, reads the items, names the version, writes/checks the plan
    for p in build.pending():                # the partitions with no output yet
        build.run_partition(p)               # decode, embed, write ONE partition in this process
    summary = build.finish()                 # assemble the version shard by shard, publish CURRENT

Resumable: the version name is derived from the model, the items and the settings, each
partition's output is written last and in one piece, and a build run again skips the partitions
already written, so a build killed at any point finishes the same index. Every item read ends
up indexed or in the version's errors.jsonl with its id and reason. `jobs.index_job` runs the
same pipeline with the partitions, and then the shards, spread over a Ray cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable

import numpy as np

from fastslow import storage
from fastslow.config import IndexRunConfig
from fastslow.data.decode import DecodeConfig
from fastslow.data.types import ReadReport
from fastslow.errors import FastslowError
from fastslow.index import partition as parts
from fastslow.index.shard_partition import is_shard_entry, shard_entry
from fastslow.log import get_logger

log = get_logger(__name__)

PLAN = "plan.json"


def absolute_path(uri: str) -> str:
    """s3:// and absolute paths as they are; a relative path made absolute against this process's working directory."""
    if storage.is_s3(uri) or os.path.isabs(uri):
        return uri
    return os.path.abspath(uri)


def index_rows(cfg: IndexRunConfig) -> tuple[list[dict], ReadReport, list[str]]:
    """Every sample of the dataset as a row, sorted by id (duplicate ids after the first are reported); or, for a
    sharded format (tars, img2dataset Parquet), no rows but its shards, read by the workers that embed them."""
    from fastslow.data.registry import open_dataset
    from fastslow.index.shard_partition import kept_meta

    reader = open_dataset(cfg.data.path, format=cfg.data.format, media_root=cfg.data.media_root)
    report = ReadReport(source=f"{reader.source} [{cfg.split or 'all'}]")
    shards = reader.shards()
    if shards is not None:
        reader.check_split(cfg.split)
        return [], report, shards
    rows, seen = [], set()
    for s in reader.samples(cfg.split, report):
        if s.id in seen:
            report.skip(s.id, s.uri, "duplicate id (the first item with this id is indexed)")
            continue
        if cfg.data.media and s.media != cfg.data.media:
            report.skip(s.id, s.uri, f"not {'an image' if cfg.data.media == 'image' else 'a video'}")
            continue
        seen.add(s.id)
        rows.append({"id": s.id, "media": s.media, "uri": s.uri, "captions": list(s.captions),
                     "meta": kept_meta(s.meta, cfg.metadata_drop)})
    rows.sort(key=lambda r: r["id"])
    return rows, report, []


def collection_root(cfg: IndexRunConfig, resolve: Callable[[str], str] = absolute_path) -> str:
    """Where the collection's media lie: data.media_root, else the dataset's folder (absolute, or an s3:// prefix)."""
    if cfg.data.media_root:
        return resolve(cfg.data.media_root)
    path = resolve(cfg.data.path)
    return path if storage.is_dir(path) else storage.parent(path)


def plan_partitions(rows: list[dict], size: int) -> list[list[dict]]:
    """Images then videos (a partition holds one media type), each in id order, in slices of `size`."""
    plan = []
    for media in ("image", "video"):
        of_media = [r for r in rows if r["media"] == media]
        plan += [of_media[i : i + size] for i in range(0, len(of_media), size)]
    return plan


def version_name(model_sha: str, rows: list[dict], cfg: IndexRunConfig, shards: list[str] = (),
                 base: str | None = None) -> str:
    """A name fixed by what the build depends on: a resubmitted build finds its own partitions. Shards count by
    name (their items are read by the workers); an append counts its base version."""
    h = hashlib.sha256()
    if base:
        h.update(f"append to\t{base}\n".encode())
    settings = {"model": model_sha, "index": vars(cfg.index), "frames": cfg.data.num_frames,
                "partition_size": cfg.embed.partition_size, "metadata_drop": cfg.metadata_drop}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for r in rows:
        h.update(f"{r['id']}\t{r['uri']}\n".encode())
    for shard in shards:
        h.update(f"shard\t{shard}\n".encode())
    return "v-" + h.hexdigest()[:12]


def check_plan(build_dir: str, plan: list[list[dict]]) -> None:
    """Write the build's plan, or check it is the one already there (a build dir is never reused for another)."""
    text = json.dumps([part["shard"] if is_shard_entry(part) else [r["id"] for r in part] for part in plan])
    uri = storage.join(build_dir, PLAN)
    if storage.exists(uri):
        if storage.read_text(uri) != text:
            raise FastslowError(f"{build_dir}: holds a build of other items; choose another version name")
        return
    storage.write_text(uri, text)


def collect(build_dir: str, plan: list, root: str):
    """All partitions' (ids, vectors, metadata table without the vectors, errors, items the shard partitions read),
    in partition order, held in this process: for benchmarks and tests that grow or compare them (a build's own
    `finish` assembles its version shard by shard instead, fastslow.index.assemble)."""
    import pyarrow as pa

    from fastslow.index.assemble import scan, vectors_of, with_locations

    layout = scan(build_dir, plan)
    tables = [parts.read_partition(build_dir, p, layout.sharded[p])[0].take(layout.kept[p])
              for p in range(len(plan))]
    table = pa.concat_tables(tables)
    vectors = vectors_of(table) if table.num_rows else np.zeros((0, 0), np.float32)
    return (table.column("id").to_pylist(), vectors, with_locations(table, root), layout.errors,
            layout.shard_read)


def store_version(root: str, version: str, ids: list[str], vectors: np.ndarray, metadata, spec,
                  identity: dict) -> None:
    """FAISS shards of the vectors, written as a complete version (not yet live) with the search setting that
    reaches the spec's target recall."""
    from fastslow.index.publish import write_version
    from fastslow.index.shards import build_shards, resolved
    from fastslow.index.tuning import choose_search_setting

    spec = resolved(spec, len(ids))
    indexes, shard_rows = build_shards(ids, vectors, spec)
    search = choose_search_setting(indexes, shard_rows, vectors, spec)
    write_version(root, version, indexes, shard_rows, metadata, spec, identity, search)


def make_current(root: str, version: str) -> None:
    """Publish `version` behind CURRENT unless it is live already."""
    from fastslow.index.publish import CURRENT, current_version, publish

    if not storage.exists(storage.join(root, CURRENT)) or current_version(root) != version:
        publish(root, version)


def _new_items(cfg: IndexRunConfig, model: dict, rows: list[dict], shards: list[str]):
    """(the live version, the rows it does not hold, the tar shards none of whose members it holds, {'items',
    'shards': how many of each it holds already}) for an append."""
    from fastslow.data.members import split_member
    from fastslow.index.changes import live_items
    from fastslow.index.publish import current_version, read_manifest

    base = current_version(cfg.root)
    held_by = (read_manifest(cfg.root, base).get("model") or {}).get("weights_sha256")
    if held_by != model["weights_sha256"]:
        raise FastslowError(f"append: the live version {base} was embedded by another model than {cfg.checkpoint}; "
                            "build a new index instead")
    held = live_items(cfg.root, base)
    containers = {split_member(uri)[0] for uri in held.values() if split_member(uri)}
    new_rows = [r for r in rows if r["id"] not in held]
    new_shards = [s for s in shards if s not in containers]
    log.info("append to %s: %d new items, %d new shards (%d items and %d shards held already)", base,
             len(new_rows), len(new_shards), len(rows) - len(new_rows), len(shards) - len(new_shards))
    return base, new_rows, new_shards, {"items": len(rows) - len(new_rows), "shards": len(shards) - len(new_shards)}


class IndexBuild:
    """One build's plan and state; `prepare` it, run its `pending()` partitions (`run_partition`), `finish` it."""

    def __init__(self, cfg: IndexRunConfig, model: dict, rows: list[dict], report: ReadReport, version: str,
                 resolve: Callable[[str], str], started: float, shards: list[str] = (), base: str | None = None,
                 already_indexed: dict | None = None):
        from fastslow.index.publish import MANIFEST, version_dir

        self.cfg, self.model, self.rows, self.report, self.version = cfg, model, rows, report, version
        self.resolve, self.started = resolve, started
        # An append: the live version it adds to, and what of the collection it holds already (not read again).
        self.base, self.already_indexed = base, already_indexed or {"items": 0, "shards": 0}
        self.build_dir = storage.join(cfg.root, "builds", version)
        self.plan = plan_partitions(rows, cfg.embed.partition_size) + [
            shard_entry(s, cfg.data.media, cfg.embed.partition_size, cfg.metadata_drop) for s in shards]
        self.published = storage.exists(storage.join(version_dir(cfg.root, version), MANIFEST))
        self._embedder = None

    @classmethod
    def prepare(cls, cfg: IndexRunConfig, resolve: Callable[[str], str] = absolute_path) -> IndexBuild:
        """Check the settings, make the paths absolute with `resolve`, read the items, name the version, and write
        (or check) its plan. `cfg` is updated in place with the resolved paths."""
        from fastslow.models.checkpoint import is_fast_type
        from fastslow.models.checkpoint import read_manifest as read_checkpoint

        started = time.time()
        if not cfg.checkpoint:
            raise FastslowError("checkpoint is not set: pass --checkpoint PATH, the Fast checkpoint that embeds")
        if not cfg.data.path:
            raise FastslowError("data.path is not set: pass --data PATH (a dataset, or a folder/prefix of media)")
        cfg.checkpoint, cfg.data.path, cfg.root = resolve(cfg.checkpoint), resolve(cfg.data.path), resolve(cfg.root)
        model = read_checkpoint(cfg.checkpoint)
        if not is_fast_type(model["model_type"]):
            raise FastslowError(f"{cfg.checkpoint}: expected a Fast checkpoint, found a {model['model_type']} one")
        rows, report, shards = index_rows(cfg)
        if not rows and not shards:
            raise FastslowError(f"{cfg.data.path}: no items to index ({report.summary()})")
        base, already = None, {"items": 0, "shards": 0}
        if cfg.append:
            base, rows, shards, already = _new_items(cfg, model, rows, shards)
        version = cfg.version or version_name(model["weights_sha256"], rows, cfg, shards, base)
        build = cls(cfg, model, rows, report, version, resolve, started, shards, base, already)
        if not build.published:
            check_plan(build.build_dir, build.plan)
            log.info("version %s: %d partitions, %d to do", version, len(build.plan), len(build.pending()))
        return build

    def pending(self) -> list[int]:
        """The partitions with no output yet (none once the version is written)."""
        if self.published:
            return []
        return [p for p, entry in enumerate(self.plan)
                if not parts.is_written(self.build_dir, p, is_shard_entry(entry))]

    def decode_config(self) -> DecodeConfig:
        # The checkpoint's manifest: its size, and the fit its model wants.
        return DecodeConfig.for_model(self.model["config"]["vision"], self.cfg.data.num_frames)

    def embedder(self) -> parts.PartitionEmbedder:
        """This process's Fast embedder (loaded on first use)."""
        if self._embedder is None:
            self._embedder = parts.PartitionEmbedder(self.cfg.checkpoint, self.cfg.embed.batch_size)
        return self._embedder

    def run_partition(self, partition: int) -> dict:
        """Decode, embed and write partition `partition` in this process (whether or not it was written before)."""
        if not 0 <= partition < len(self.plan):
            raise FastslowError(f"partition {partition}: the build has partitions 0..{len(self.plan) - 1}")
        counts = parts.run_partition(self.build_dir, partition, self.plan[partition], self.decode_config(),
                                     self.embedder())
        log.info("partition %d: %d indexed, %d errors", partition, counts["indexed"], counts["errors"])
        return counts

    def collect(self):
        """(ids, vectors, metadata, errors, items read) of the written partitions; the read's problems come first
        in errors. Items read: the driver's read, and what the workers read of the shard partitions."""
        ids, vectors, metadata, errors, shard_read = collect(self.build_dir, self.plan,
                                                             collection_root(self.cfg, self.resolve))
        errors = [{"id": p.id, "uri": p.uri, "reason": p.reason} for p in self.report.problems] + errors
        return ids, vectors, metadata, errors, self.report.read + shard_read

    def identity(self) -> dict:
        """The version's model entry. num_frames: how videos were sampled, so the re-ranker decodes candidates the
        same way. collection_root: the search app serves an item's media only from under it."""
        return {"checkpoint": self.cfg.checkpoint, "weights_sha256": self.model["weights_sha256"],
                "config": self.model["config"], "num_frames": self.cfg.data.num_frames,
                "collection_root": collection_root(self.cfg, self.resolve)}

    def finish(self, run: Callable | None = None) -> dict:
        """Check nothing was lost, write the version shard by shard (`run(fill_shard, calls)`: here one after
        another, or the job's Ray tasks; fastslow.index.assemble), publish it; returns the summary (items read =
        indexed + errors)."""
        from fastslow.index.assemble import assemble, local_map, scan
        from fastslow.index.changes import append_version, collect_garbage, compact, needs_compaction
        from fastslow.index.publish import version_dir

        cfg, version = self.cfg, self.version
        missing = self.pending()
        if missing:
            raise FastslowError(f"version {version}: partitions {missing} are not written yet; run them first")
        layout = scan(self.build_dir, self.plan)
        errors = [{"id": p.id, "uri": p.uri, "reason": p.reason} for p in self.report.problems] + layout.errors
        # An append reads every row of the collection and leaves those the base holds.
        read = self.report.read + layout.shard_read - self.already_indexed["items"]
        if read != layout.items + len(errors):
            raise RuntimeError(f"lost items: read {read} != indexed {layout.items} + errors {len(errors)}")
        errors_file = storage.join(version_dir(cfg.root, version), "errors.jsonl")
        summary = {}
        if self.base and not layout.items:  # an append with nothing new that could be indexed: the base stays live
            version, errors_file = self.base, None
        elif not self.published:
            storage.write_text(errors_file, "".join(json.dumps(e) + "\n" for e in errors))
            if not layout.items:
                raise FastslowError(f"{cfg.data.path}: no item could be indexed (see the errors file)")
            if self.base:
                ids, vectors, metadata, _, _ = self.collect()
                append_version(cfg.root, self.base, version, ids, vectors, metadata)
            else:
                assemble(self.build_dir, layout, cfg.root, version, cfg.index, self.identity(),
                         collection_root(cfg, self.resolve), run or local_map)
        make_current(cfg.root, version)
        if self.base:
            summary = {"appended_to": self.base, "already_indexed": self.already_indexed["items"],
                       "shards_already_indexed": self.already_indexed["shards"]}
            if needs_compaction(cfg.root, version, cfg.compact_at):
                version = summary["compacted"] = compact(cfg.root)["version"]
        if cfg.keep_versions is not None:
            summary["versions_removed"] = len(collect_garbage(cfg.root, cfg.keep_versions))
        seconds = time.time() - self.started
        return {"version": version, "root": cfg.root, "read": read, "indexed": layout.items,
                "errors": len(errors), "errors_file": errors_file, "shards": cfg.index.shards,
                "seconds": round(seconds, 1), "items_per_s": round(read / max(seconds, 1e-9), 1), **summary}


def build_index(cfg: IndexRunConfig, resolve: Callable[[str], str] = absolute_path) -> dict:
    """The local executor: every pending partition in this process, one after another, then finish."""
    build = IndexBuild.prepare(cfg, resolve)
    for p in build.pending():
        build.run_partition(p)
    return build.finish()
