"""One shard of a published index version, searched in this process: with or without a metadata filter."""

from __future__ import annotations

import math

import numpy as np

from fastslow.data.decode import DecodeConfig
from fastslow.index.publish import load_version
from fastslow.index.shards import item_vectors, merge_results, on_gpu, prepare_vectors, search_params, search_shard
from fastslow.search.filters import ItemFields

# A filtered search scores the passing items exactly when at most this many pass in the shard (their vectors are
# read from the index: this bounds the memory of one query); otherwise it searches the index deeper and keeps the
# passing items (see ShardSearcher.search).
SCAN_MAX = 20_000
OVERFETCH = 2  # a deeper search fetches this many times the depth at which k passing items are expected


# What each hit carries from the index's metadata table.
HIT_FIELDS = ("id", "uri", "media", "caption", "location", "metadata", "offset", "size")



def index_num_frames(manifest: dict) -> int:
    """How the index's videos were sampled (frames per video), so candidates are decoded the same way."""
    return int((manifest.get("model") or {}).get("num_frames", DecodeConfig.num_frames))



class ShardSearcher:
    """One shard of one index version, verified against its manifest, with its items' metadata. Searched with
    `nprobe`/`ef_search` where given, else with the setting recorded in the version's manifest at build."""

    def __init__(self, root: str, shard: int, version: str | None = None, expect_dim: int | None = None,
                 expect_model_sha256: str | None = None, nprobe: int | None = None, ef_search: int | None = None):
        loaded = load_version(root, version, shards=[shard], expect_dim=expect_dim,
                              expect_model_sha256=expect_model_sha256)
        self.root, self.shard, self.version = root, shard, loaded.version
        self.num_shards = len(loaded.manifest["shards"])
        self.metric = loaded.manifest["metric"]
        self.rows = loaded.rows[0]
        recorded = loaded.manifest.get("search") or {}  # the version's own, chosen at build for its target recall
        nprobe = recorded.get("nprobe") if nprobe is None else nprobe
        ef_search = recorded.get("ef_search") if ef_search is None else ef_search
        # Computed first, CPU or not: it refuses an index whose nprobe/efSearch cannot be set per call.
        params = search_params(loaded.indexes[0], nprobe, ef_search)
        # The host copy reads items' vectors (like-queries, filtered scans); on a GPU host it is kept beside the
        # GPU copy.
        self.host_index = loaded.indexes[0]
        prepare_vectors(self.host_index)
        # On a GPU where faiss-gpu and a GPU are there (nprobe then set on this process's copy), else the CPU.
        self.index, self.gpu_resources = on_gpu(loaded.indexes[0], nprobe)
        self.params = None if self.gpu_resources is not None else params
        self.num_frames = index_num_frames(loaded.manifest)
        # This shard's metadata alone, held as Arrow columns (position j is row rows[j]); a hit's fields are read
        # from them when it is answered, so a replica holds no Python object per item.
        table = loaded.shard_metadata[0]
        self.columns = {f: table.column(f) for f in HIT_FIELDS if f in table.column_names}
        self.fields = ItemFields(table)
        self._by_row = np.argsort(self.rows, kind="stable")
        # Items deleted since the shard's files were written (fastslow.index.changes): never answered.
        gone = loaded.deleted[0] if loaded.deleted else np.zeros(0, np.int64)
        self.alive = ~np.isin(self.rows, gone) if len(gone) else None

    def __len__(self) -> int:
        return len(self.rows) if self.alive is None else int(self.alive.sum())

    def describe_fields(self) -> dict[str, dict]:
        """The fields a filter may name in this shard, described over its items not deleted (ItemFields.describe)."""
        return self.fields.describe(self.alive)

    def _item(self, position: int, fields=HIT_FIELDS) -> dict:
        return {f: (self.columns[f][position].as_py() if f in self.columns else None) for f in fields}

    def _position(self, row: int) -> int:
        return int(self._by_row[np.searchsorted(self.rows, row, sorter=self._by_row)])

    def search(self, queries: np.ndarray, k: int, filter_spec: dict | None = None) -> list[list[dict]]:
        """Each query's best k of this shard, best first: metadata plus `row`, `fast_score`, `shard`; with a
        (checked) filter, its best k of the items that pass it, k of them whenever k pass."""
        passing = self.fields.mask(filter_spec) if filter_spec else None
        if self.alive is not None:  # deleted rows: searched as a filter every item but those passes
            passing = self.alive if passing is None else passing & self.alive
        if passing is not None:
            scores, rows = self._filtered(queries, k, passing)
        else:
            scores, rows = search_shard(self.index, self.rows, queries, k, self.params)
        return [[{**self._item(self._position(r)), "row": int(r), "fast_score": float(s), "shard": self.shard}
                 for s, r in zip(qs, qr) if r >= 0] for qs, qr in zip(scores, rows)]

    def _filtered(self, queries: np.ndarray, k: int, passing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of each query's best k items among `passing` (bool per position).

        Few passing items (SCAN_MAX): all of them scored exactly. Many: the index searched OVERFETCH times deeper
        than where k passing items are expected, four times deeper again while fewer turn up, until k do or the
        index has nothing more to give (an approximate index reaches only part of the items), and then the exact
        scan of every passing item, in chunks. Exact indexes give the exact filtered top k either way; approximate
        ones their own approximation of it, always k items when k pass.
        """
        positions = np.flatnonzero(passing)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if len(positions) > SCAN_MAX:
            depth = min(self.index.ntotal, math.ceil(OVERFETCH * k * self.index.ntotal / len(positions)))
            while True:
                scores, found = search_shard(self.index, np.arange(self.index.ntotal), queries, depth, self.params)
                ok = (found >= 0) & passing[np.clip(found, 0, None)]
                if (ok.sum(axis=1) >= k).all():
                    kept = np.where(ok, self.rows[np.clip(found, 0, None)], -1)
                    return merge_results([(scores, kept)], k, self.metric)
                if depth >= self.index.ntotal or (found < 0).any():
                    break  # searched as deep as the index reaches
                depth = min(self.index.ntotal, 4 * depth)
        best_scores = np.zeros((len(queries), 0), np.float32)
        best_rows = np.zeros((len(queries), 0), np.int64)
        for start in range(0, len(positions), SCAN_MAX):
            chunk = positions[start : start + SCAN_MAX]
            vectors = item_vectors(self.host_index, chunk)
            if self.metric == "ip":
                scores = queries @ vectors.T
            else:
                scores = ((queries[:, None, :] - vectors[None]) ** 2).sum(-1)
            rows = np.broadcast_to(self.rows[chunk], scores.shape)
            best_scores, best_rows = merge_results(
                [(np.concatenate([best_scores, scores], 1), np.concatenate([best_rows, rows], 1))], k, self.metric)
        return best_scores, best_rows

    def _find(self, item_id: str) -> int:
        """The position of `item_id` in this shard (a live one: an id deleted then added again is held twice), or
        -1."""
        import pyarrow.compute as pc

        if self.alive is None:
            return pc.index(self.columns["id"], item_id).as_py()  # a vectorised scan: no id -> row dict kept
        same = np.flatnonzero(pc.equal(self.columns["id"], item_id).to_numpy(zero_copy_only=False))
        same = same[self.alive[same]]
        return int(same[0]) if len(same) else -1

    def vector(self, item_id: str) -> np.ndarray | None:
        """The vector this shard holds for `item_id` (as FAISS stores it), or None if the shard lacks it."""
        position = self._find(item_id)
        return None if position < 0 else item_vectors(self.host_index, np.array([position]))[0]

    def lookup(self, item_id: str) -> dict | None:
        """{id, uri, media, offset, size} of the item `item_id` if this shard holds it, else None."""
        position = self._find(item_id)
        return None if position < 0 else self._item(position, ("id", "uri", "media", "offset", "size"))

