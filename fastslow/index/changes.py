"""Changing a published index without rebuilding it: add items, delete items, fold the changes back, and drop old
versions.

    append_version(root, base, version, added)  # the added items' vectors and metadata, in the base's shards
    delete_items(root, ids)                     # a version without them, published
    compact(root)                               # a version whose changed shards are whole again, published
    collect_garbage(root, keep)                 # the live version and `keep` before it stay; what they use stays

A changed version shares its base's shard files (publish.py: a shard entry's `dir`) and writes, per changed shard,
one delta holding every item added since those files were written and the list of every row deleted since (both
cumulative, so a version never needs more than its base files and its own folder). Each change is a new version,
published in one write of CURRENT as a build is; the app swaps to it as to any other. Compaction rebuilds each
changed shard from the vectors its index holds and its delta, in a copy of its trained index (so an IVF keeps its
centroids), and leaves unchanged shards shared.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np

from fastslow import storage
from fastslow.errors import FastslowError
from fastslow.index.publish import (
    MANIFEST, _npy_bytes, _parquet_bytes, _sha256, check_new_version, current_version, deleted_rows, load_version,
    publish, read_delta, read_manifest, version_dir, write_manifest, write_shard)
from fastslow.index.shards import IndexSpec, add_rows, import_faiss, item_vectors, prepare_vectors, shard_of
from fastslow.log import get_logger

log = get_logger(__name__)

COMPACT_AT = 0.25  # a shard whose delta and deleted rows pass this share of its files' items is compacted


def _spec(manifest: dict) -> IndexSpec:
    """The spec a version was built with (its training sample and seed where its manifest records them)."""
    training = manifest.get("training") or {}
    return IndexSpec(factory=manifest["factory"], metric=manifest["metric"], shards=len(manifest["shards"]),
                     train_sample=training.get("train_sample", IndexSpec.train_sample),
                     seed=training.get("seed", IndexSpec.seed))


def change_name(base: str, what: str, detail: str) -> str:
    """A new version's name from its base and the change: the same change of the same base gets the same name."""
    key = "\t".join((base, what, detail))
    return "v-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def shard_items(root: str, version: str, shard: int, column: str = "id") -> tuple[list, np.ndarray]:
    """(`column` of every item shard `shard` of `version` holds, deleted ones included; their rows), read from its
    metadata files (no index is loaded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest, base = read_manifest(root, version), version_dir(root, version)
    entry = manifest["shards"][shard]
    folder = version_dir(root, entry["dir"]) if entry.get("dir") else base
    parts = [(folder, entry["metadata_file"], entry["rows_file"])]
    if entry.get("delta"):
        parts.append((base, entry["delta"]["metadata_file"], entry["delta"]["rows_file"]))
    values, rows = [], []
    for where, meta_file, rows_file in parts:
        values += pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(where, meta_file))),
                                columns=[column]).column(column).to_pylist()
        rows.append(np.load(io.BytesIO(storage.read_bytes(storage.join(where, rows_file))), allow_pickle=False))
    return values, np.concatenate(rows)


def live_items(root: str, version: str) -> dict[str, str]:
    """id -> uri of a version's items (its deleted ones left out)."""
    manifest, found = read_manifest(root, version), {}
    for s, entry in enumerate(manifest["shards"]):
        ids, rows = shard_items(root, version, s)
        uris, _ = shard_items(root, version, s, "uri")
        gone = np.isin(rows, deleted_rows(version_dir(root, version), entry))
        found.update((i, u) for i, u, dead in zip(ids, uris, gone) if not dead)
    return found


def live_ids(root: str, version: str) -> set[str]:
    """The ids of a version's items (its deleted ones left out)."""
    return set(live_items(root, version))


def _shared(entry: dict, base_version: str) -> dict:
    """A shard entry of the new version that uses the same files as `entry` of `base_version`."""
    out = {k: v for k, v in entry.items() if k not in ("delta", "deleted")}
    out["dir"] = entry.get("dir") or base_version
    return out


def _write_changes(folder: str, shard: int, entry: dict, vectors: np.ndarray, rows: np.ndarray, metadata,
                   deleted: np.ndarray) -> dict:
    """`entry` with this version's delta (vectors, rows, metadata of every item added since its files) and
    deleted rows written into `folder`."""
    name = f"shard-{shard:03d}"
    if len(rows):
        files = {"vectors": _npy_bytes(np.ascontiguousarray(vectors, dtype=np.float32)), "rows": _npy_bytes(rows),
                 "metadata": _parquet_bytes(metadata)}
        names = {"vectors": f"{name}.delta.npy", "rows": f"{name}.delta.rows.npy",
                 "metadata": f"{name}.delta.meta.parquet"}
        for part, data in files.items():
            storage.write_bytes(storage.join(folder, names[part]), data)
        entry["delta"] = {"vectors_file": names["vectors"], "vectors_sha256": _sha256(files["vectors"]),
                          "rows_file": names["rows"], "rows_sha256": _sha256(files["rows"]),
                          "metadata_file": names["metadata"], "metadata_sha256": _sha256(files["metadata"]),
                          "count": int(len(rows))}
    if len(deleted):
        data = _npy_bytes(np.sort(deleted).astype(np.int64))
        storage.write_bytes(storage.join(folder, f"{name}.deleted.npy"), data)
        entry["deleted"] = {"file": f"{name}.deleted.npy", "sha256": _sha256(data), "count": int(len(deleted))}
    return entry


def _changed_version(root: str, base: str, version: str, added_ids: list[str], added_vectors: np.ndarray,
                     added_metadata, deleted_ids: set[str]) -> dict:
    """Write `version`: `base` with the items added (ids, vectors, metadata rows in the same order) and the items
    `deleted_ids` removed. Its manifest."""
    import pyarrow as pa

    manifest = read_manifest(root, base)
    folder = check_new_version(root, version)
    shards = len(manifest["shards"])
    next_row = int(manifest.get("next_row", manifest["items"]))
    order = np.argsort(np.array(added_ids, dtype=object), kind="stable") if added_ids else np.zeros(0, np.int64)
    new_rows = np.empty(len(added_ids), np.int64)
    new_rows[order] = next_row + np.arange(len(added_ids))
    assignment = np.array([shard_of(i, shards) for i in added_ids], dtype=np.int64)
    entries, base_dir = [], version_dir(root, base)
    for s, entry in enumerate(manifest["shards"]):
        vectors, rows, metadata = read_delta(base_dir, entry, manifest["dim"])
        deleted = deleted_rows(base_dir, entry)
        mine = np.flatnonzero(assignment == s)
        mine = mine[np.argsort(new_rows[mine])]
        if len(mine):
            vectors = np.concatenate([vectors.reshape(-1, manifest["dim"]), added_vectors[mine]])
            rows = np.concatenate([rows, new_rows[mine]])
            more = added_metadata.take(mine)
            metadata = more if metadata is None else pa.concat_tables([metadata, more.cast(metadata.schema)])
        if deleted_ids:
            ids, held = shard_items(root, base, s)
            deleted = np.union1d(deleted, held[[i in deleted_ids for i in ids]]).astype(np.int64)
        new = _shared(entry, base)
        if len(rows) or len(deleted):
            new = _write_changes(folder, s, new, vectors, rows, metadata, deleted)
        new["dim"] = manifest["dim"]
        entries.append(new)
    return _finish(root, version, manifest, entries, next_row + len(added_ids))


def _finish(root: str, version: str, base_manifest: dict, entries: list[dict], next_row: int) -> dict:
    """Write the manifest of a changed version (the base's model and search setting), with `next_row`."""
    import json

    from fastslow.index.publish import live_count

    items = sum(live_count(e) for e in entries)
    manifest = write_manifest(root, version, entries, _spec(base_manifest), items, base_manifest["model"],
                              base_manifest.get("search"))
    manifest["next_row"], manifest["factory"] = int(next_row), base_manifest["factory"]
    storage.write_text(storage.join(version_dir(root, version), MANIFEST), json.dumps(manifest, indent=2))
    return manifest


def append_version(root: str, base: str, version: str, ids: list[str], vectors: np.ndarray, metadata) -> dict:
    """Write `version`: `base` plus the items `ids` (new ids only), with their vectors and metadata rows."""
    if not ids:
        raise FastslowError(f"append: no new items to add to version {base}")
    return _changed_version(root, base, version, ids, vectors, metadata, set())


def delete_items(root: str, ids: list[str], compact_at: float = COMPACT_AT) -> dict:
    """A new version of the live one without the items `ids`, published (then compacted where a shard's changes
    pass `compact_at`); {'version', 'deleted', 'not_found'}. Ids the live version does not hold are reported, and
    when none is held nothing is written."""
    base = current_version(root)
    present = live_ids(root, base)
    wanted = list(dict.fromkeys(ids))
    found = [i for i in wanted if i in present]
    missing = [i for i in wanted if i not in present]
    if not found:
        raise FastslowError(f"delete: none of the {len(wanted)} ids is in the live version {base}"
                            + (f" (e.g. {missing[0]!r})" if missing else ""))
    version = change_name(base, "delete", "\n".join(sorted(found)))
    if not storage.exists(storage.join(version_dir(root, version), MANIFEST)):
        _changed_version(root, base, version, [], np.zeros((0, 0), np.float32), None, set(found))
    publish(root, version)
    log.info("version %s: %d items deleted from %s", version, len(found), base)
    summary = {"version": version, "base": base, "deleted": len(found), "not_found": missing}
    if needs_compaction(root, version, compact_at):
        summary["compacted"] = compact(root)["version"]
        summary["version"] = summary["compacted"]
    return summary


def needs_compaction(root: str, version: str, compact_at: float = COMPACT_AT) -> bool:
    """Whether any shard's delta plus deleted rows pass `compact_at` of the items its files hold."""
    for entry in read_manifest(root, version)["shards"]:
        changes = (entry.get("delta") or {}).get("count", 0) + (entry.get("deleted") or {}).get("count", 0)
        if changes and changes > compact_at * max(entry["count"], 1):
            return True
    return False


def compact(root: str) -> dict:
    """A version of the live one with no delta and no deleted rows, published; {'version', 'base', 'shards_rebuilt'}
    (the live version itself when nothing changed).

    An index without training (Flat, HNSW…) has only its changed shards rebuilt, the others stay shared. A trained
    one (IVF…, PQ…) is rebuilt whole as a fresh build of its items would be: trained again on the same sample of
    them, images then videos in id order (its centroids would otherwise be those of the items first indexed). Its
    items' vectors are read back from the index: those of IVF…,Flat and HNSW exactly, of PQ and SQ as decoded.
    """
    base = current_version(root)
    manifest = read_manifest(root, base)
    changed = [s for s, e in enumerate(manifest["shards"]) if e.get("delta") or e.get("deleted")]
    if not changed:
        return {"version": base, "base": base, "shards_rebuilt": 0}
    version = change_name(base, "compact", "")
    if not storage.exists(storage.join(version_dir(root, version), MANIFEST)):
        trained = not import_faiss().index_factory(manifest["dim"], manifest["factory"]).is_trained
        rebuilt = list(range(len(manifest["shards"]))) if trained else changed
        _compacted(root, base, version, manifest, rebuilt, retrain=trained)
        changed = rebuilt
    publish(root, version)
    log.info("version %s: %s compacted (%d shards rebuilt)", version, base, len(changed))
    return {"version": version, "base": base, "shards_rebuilt": len(changed),
            "items": read_manifest(root, version)["items"]}


def _live_part(loaded, i: int):
    """(positions of shard i's live items in id order, their vectors, its rows, its metadata) of a loaded version."""
    index, rows, table, gone = loaded.indexes[i], loaded.rows[i], loaded.shard_metadata[i], loaded.deleted[i]
    prepare_vectors(index)
    live = np.flatnonzero(~np.isin(rows, gone))
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)[live]
    order = live[np.argsort(ids, kind="stable")]  # a shard holds its rows in id order, as a build writes it
    return order, item_vectors(index, order), rows, table


def _compacted(root: str, base: str, version: str, manifest: dict, rebuilt: list[int], retrain: bool) -> None:
    """Write `version`: `base`'s shards `rebuilt` written whole, in a copy of their trained index, the others
    shared; or, `retrain`, the whole version as a fresh build of its items writes it (`_retrained`)."""
    faiss = import_faiss()
    folder = check_new_version(root, version)
    loaded = load_version(root, base, shards=rebuilt)
    parts = [_live_part(loaded, i) for i in range(len(rebuilt))]
    if retrain:
        return _retrained(root, version, manifest, parts)
    entries = []
    for s, entry in enumerate(manifest["shards"]):
        if s not in rebuilt:
            new = _shared(entry, base)
            new["dim"] = manifest["dim"]
            entries.append(new)
            continue
        order, vectors, rows, table = parts[rebuilt.index(s)]
        index = faiss.clone_index(loaded.indexes[rebuilt.index(s)])
        index.reset()  # the trained quantizer and codec kept, the items gone
        if len(order):
            add_rows(index, vectors)
        entries.append(write_shard(folder, s, index, rows[order], table.take(order)))
    _finish(root, version, manifest, entries, int(manifest.get("next_row", manifest["items"])))


def _retrained(root: str, version: str, manifest: dict, parts: list) -> None:
    """Write `version` from the live items of `parts` (every shard's) with the build's own `store_version`, as a
    fresh build of them writes it: rows numbered as a build reads the items (images, then videos, each in id
    order), the index trained on the spec's sample, and the search setting measured again."""
    import pyarrow as pa

    from fastslow.index.build import store_version

    table = pa.concat_tables([t.take(o) for o, _, _, t in parts])
    vectors = np.concatenate([v for _, v, _, _ in parts])
    media, ids = table.column("media").to_pylist(), table.column("id").to_pylist()
    read_order = np.array(sorted(range(len(ids)), key=lambda j: (media[j] != "image", ids[j])), dtype=np.int64)
    spec = _spec(manifest)
    searched = manifest.get("search") or {}
    spec.target_recall = searched.get("target_recall", 0.0)
    spec.tune_queries = searched.get("queries") or spec.tune_queries
    store_version(root, version, [ids[j] for j in read_order], vectors[read_order], table.take(read_order), spec,
                  manifest["model"])


def collect_garbage(root: str, keep: int) -> list[str]:
    """Delete the versions older than the live one beyond the `keep` made just before it (by creation time),
    except those whose files a kept version uses, and their build folders; the names deleted."""
    if keep < 0:
        raise FastslowError(f"index.keep_versions: must be 0 or more, got {keep}")
    live = current_version(root)
    manifests = {}
    for path in storage.list_files(storage.join(root, "versions"), suffixes=MANIFEST):
        name = path.split("/")[-2]
        manifests[name] = read_manifest(root, name)
    ordered = sorted(manifests, key=lambda v: (manifests[v]["created"], v))
    if live not in manifests:
        return []
    at = ordered.index(live)
    kept = set(ordered[max(0, at - keep) : at + 1]) | set(ordered[at + 1 :])  # newer ones: builds not yet live
    used = {e["dir"] for v in kept for e in manifests[v]["shards"] if e.get("dir")}
    doomed = [v for v in ordered if v not in kept and v not in used]
    for v in doomed:
        storage.delete_tree(version_dir(root, v))
        storage.delete_tree(storage.join(root, "builds", v))
    if doomed:
        log.info("removed %d old index versions (kept %s and %d before it)", len(doomed), live, keep)
    return doomed
