"""One shard of a published index version, searched in this process."""

from __future__ import annotations

import numpy as np

from fastslow.data.decode import DecodeConfig
from fastslow.index.publish import load_version
from fastslow.index.shards import on_gpu, search_params, search_shard


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
        # On a GPU where faiss-gpu and a GPU are there (nprobe then set on this process's copy), else the CPU.
        self.index, self.gpu_resources = on_gpu(loaded.indexes[0], nprobe)
        self.params = None if self.gpu_resources is not None else params
        self.num_frames = index_num_frames(loaded.manifest)
        # This shard's metadata alone, held as Arrow columns (position j is row rows[j]); a hit's fields are read
        # from them when it is answered, so a replica holds no Python object per item.
        table = loaded.shard_metadata[0]
        self.columns = {f: table.column(f) for f in HIT_FIELDS if f in table.column_names}
        self._by_row = np.argsort(self.rows, kind="stable")

    def __len__(self) -> int:
        return len(self.rows)

    def _item(self, position: int, fields=HIT_FIELDS) -> dict:
        return {f: (self.columns[f][position].as_py() if f in self.columns else None) for f in fields}

    def _position(self, row: int) -> int:
        return int(self._by_row[np.searchsorted(self.rows, row, sorter=self._by_row)])

    def search(self, queries: np.ndarray, k: int) -> list[list[dict]]:
        """Each query's best k of this shard, best first: metadata plus `row`, `fast_score`, `shard`."""
        scores, rows = search_shard(self.index, self.rows, queries, k, self.params)
        return [[{**self._item(self._position(r)), "row": int(r), "fast_score": float(s), "shard": self.shard}
                 for s, r in zip(qs, qr) if r >= 0] for qs, qr in zip(scores, rows)]

    def lookup(self, item_id: str) -> dict | None:
        """{id, uri, media, offset, size} of the item `item_id` if this shard holds it, else None."""
        import pyarrow.compute as pc

        position = pc.index(self.columns["id"], item_id).as_py()  # a vectorised scan: no id -> row dict kept
        return None if position < 0 else self._item(position, ("id", "uri", "media", "offset", "size"))
