"""A version assembled from a build's written partitions in bounded memory: no process holds every vector.

    layout = scan(build_dir, plan)                          # ids and uris only: which rows are indexed, global rows
    manifest = assemble(build_dir, layout, root, version, ...)  # train once on a sample, then one task per shard

The driver reads ids and uris (and the vectors of the training sample and of the search-setting queries); each
shard is filled by its own call of `fill_shard` (a Ray task in the index job, a loop locally): it streams the
partitions, keeps its own items, adds them in id order to a copy of the trained empty index, writes the shard's
files (index, rows, its items' metadata) and measures its part of the search setting (fastslow.index.tuning). The
result is the index `store_version` writes from the same vectors held in memory (tested).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastslow import storage
from fastslow.data.members import split_member
from fastslow.index import partition as parts
from fastslow.index.shard_partition import is_shard_entry
from fastslow.index.shards import IndexSpec, add_rows, empty_index, import_faiss, resolved, shard_of
from fastslow.log import get_logger

log = get_logger(__name__)


def public_location(uri: str, metadata: str | None, root: str) -> str:
    """An item's reference for answers: the collection's own `url` where it has one, else its path under the
    collection root (a shard member's `shard#member`); never an absolute path of the server's file system."""
    url = json.loads(metadata).get("url") if metadata else None
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return url
    prefix = root.rstrip("/") + "/"
    if uri.startswith(prefix):
        return uri[len(prefix) :]
    inside = split_member(uri)
    return storage.basename(uri) if inside is None else f"{storage.basename(inside[0])}#{inside[1]}"


def with_locations(table, root: str):
    """A partition's metadata (its embeddings dropped) with each item's public `location`."""
    import pyarrow as pa

    locations = [public_location(u, m, root) for u, m in zip(table.column("uri").to_pylist(),
                                                             table.column("metadata").to_pylist())]
    table = table.drop_columns([c for c in ("embedding",) if c in table.column_names])
    return table.append_column("location", pa.array(locations, pa.string()))


def vectors_of(table) -> np.ndarray:
    """A partition's `embedding` column as an (n, d) float32 array, without a Python object per number."""
    import pyarrow.compute as pc

    column = table.column("embedding")
    if not len(column):
        return np.zeros((0, 0), np.float32)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(column), -1)


@dataclass
class Layout:
    """Which rows of each written partition are indexed, and the global row of each: partitions in plan order,
    their kept rows in order (an id met again in a later partition is reported there, the first is indexed)."""

    sharded: list[bool]  # per plan entry: a shard partition (read from its chunks)
    kept: list[np.ndarray]  # per plan entry: positions of its table that are indexed
    offsets: list[int]  # per plan entry: the global row of its first kept item
    items: int
    dim: int  # the vectors' dimension (0 when nothing is indexed)
    errors: list[dict]  # the partitions' errors and the duplicates, in plan order
    shard_read: int  # items the shard partitions read (indexed + their errors)

    def partition_rows(self, p: int) -> np.ndarray:
        return self.offsets[p] + np.arange(len(self.kept[p]), dtype=np.int64)


def scan(build_dir: str, plan: list) -> Layout:
    """The layout of a build whose partitions are all written, from their ids and uris alone."""
    sharded = [is_shard_entry(entry) for entry in plan]
    kept, offsets, errors, shard_read, first, items = [], [], [], 0, {}, 0
    for p, is_sharded in enumerate(sharded):
        table, errs = parts.read_partition(build_dir, p, is_sharded, columns=["id", "uri"])
        if is_sharded:
            shard_read += table.num_rows + len(errs)
        keep = []
        for row, (item_id, uri) in enumerate(zip(table.column("id").to_pylist(), table.column("uri").to_pylist())):
            if item_id in first:  # the first partition's shard (or number): no URI kept per item
                where = plan[first[item_id]]["shard"] if sharded[first[item_id]] else f"partition {first[item_id]}"
                errors.append({"id": item_id, "uri": uri, "reason": f"duplicate id (indexed from {where})"})
            else:
                first[item_id] = p
                keep.append(row)
        kept.append(np.asarray(keep, dtype=np.int64))
        offsets.append(items)
        items += len(keep)
        errors += errs
    dim = 0
    for p in (p for p in range(len(kept)) if len(kept[p])):  # the first partition with an indexed item
        table, _ = parts.read_partition(build_dir, p, sharded[p], columns=["embedding"])
        dim = vectors_of(table.slice(0, 1)).shape[1]
        break
    return Layout(sharded, kept, offsets, items, dim, errors, shard_read)


def read_vectors(build_dir: str, layout: Layout, rows: np.ndarray) -> np.ndarray:
    """The vectors of the global rows `rows` (sorted), read partition by partition."""
    out = []
    for p in range(len(layout.kept)):
        mine = rows[(rows >= layout.offsets[p]) & (rows < layout.offsets[p] + len(layout.kept[p]))]
        if len(mine):
            table, _ = parts.read_partition(build_dir, p, layout.sharded[p], columns=["embedding"])
            out.append(vectors_of(table.take(layout.kept[p][mine - layout.offsets[p]])))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def fill_shard(build_dir: str, layout: Layout, shard: int, spec: IndexSpec, trained: np.ndarray, version_base: str,
               collection_root: str, queries: np.ndarray | None) -> dict:
    """Build, write and measure shard `shard` (see the module's docstring): {'entry': its manifest entry,
    'part': its part of the search-setting measurement, or None}. `trained`: the serialized trained empty index."""
    import pyarrow as pa

    from fastslow.index.publish import write_shard
    from fastslow.index.tuning import RECALL_AT, shard_part

    faiss = import_faiss()
    ids, rows, vectors, metas = [], [], [], []
    for p in range(len(layout.kept)):
        if not len(layout.kept[p]):
            continue
        table, _ = parts.read_partition(build_dir, p, layout.sharded[p])
        table = table.take(layout.kept[p])
        mine = np.flatnonzero([shard_of(i, spec.shards) == shard for i in table.column("id").to_pylist()])
        if not len(mine):
            continue
        table = table.take(mine)
        ids += table.column("id").to_pylist()
        rows.append(layout.partition_rows(p)[mine])
        vectors.append(vectors_of(table))
        metas.append(with_locations(table, collection_root))
    index = faiss.deserialize_index(trained)
    order = np.argsort(np.array(ids, dtype=object), kind="stable")  # a shard holds its rows in id order
    members = np.concatenate(rows)[order] if rows else np.zeros(0, np.int64)
    shard_vectors = np.concatenate(vectors) if vectors else np.zeros((0, index.d), np.float32)
    del vectors  # the shard's vectors twice at most (before and after ordering), never three times
    shard_vectors = shard_vectors[order]
    if len(members):
        add_rows(index, shard_vectors)
    metadata = pa.concat_tables(metas).take(order) if metas else None
    if metadata is None:  # an empty shard: an empty table of the partitions' metadata columns
        table, _ = parts.read_partition(build_dir, 0, layout.sharded[0])
        metadata = with_locations(table.slice(0, 0), collection_root)
    entry = write_shard(version_base, shard, index, members, metadata)
    part = None if queries is None else shard_part(index, members, shard_vectors, queries, spec.metric, RECALL_AT)
    log.info("shard %d: %d items written", shard, len(members))
    return {"entry": entry, "part": part}


def local_map(fn: Callable, calls: list[dict]) -> list:
    """Run `fn(**kwargs)` for each call here, one after another (the job runs them as Ray tasks)."""
    return [fn(**kwargs) for kwargs in calls]


def assemble(build_dir: str, layout: Layout, root: str, version: str, spec: IndexSpec, model: dict,
             collection_root: str, run: Callable = local_map) -> dict:
    """Write the version from the written partitions (laid out by `scan`), shards filled by `run(fill_shard,
    calls)`; its manifest."""
    from fastslow.index.publish import check_new_version, write_manifest
    from fastslow.index.tuning import choose_setting, query_rows, setting_of

    base = check_new_version(root, version)
    spec = resolved(spec, layout.items)
    rng = np.random.default_rng(spec.seed)  # the training sample empty_index would take of all vectors
    sample = np.sort(rng.choice(layout.items, min(spec.train_sample, layout.items), replace=False))
    trained = empty_index(spec, layout.dim, lambda: read_vectors(build_dir, layout, sample))
    measured = spec.target_recall > 0 and layout.items >= 2
    chosen = query_rows(layout.items, spec) if measured else np.zeros(0, np.int64)
    queries = read_vectors(build_dir, layout, chosen) if measured else None
    slim = dataclasses.replace(layout, errors=[])  # what each shard's call needs of the layout
    blob = import_faiss().serialize_index(trained)
    calls = [{"build_dir": build_dir, "layout": slim, "shard": s, "spec": spec, "trained": blob,
              "version_base": base, "collection_root": collection_root, "queries": queries}
             for s in range(spec.shards)]
    done = run(fill_shard, calls)
    search = (choose_setting([d["part"] for d in done], chosen, spec.metric, spec, *setting_of(trained))
              if measured else {})
    return write_manifest(root, version, [d["entry"] for d in done], spec, layout.items, model, search)
