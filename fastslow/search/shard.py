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
    """One shard of one index version, verified against its manifest, with its items' metadata."""

    def __init__(self, root: str, shard: int, version: str | None = None, expect_dim: int | None = None,
                 expect_model_sha256: str | None = None, nprobe: int | None = None, ef_search: int | None = None):
        loaded = load_version(root, version, shards=[shard], expect_dim=expect_dim,
                              expect_model_sha256=expect_model_sha256)
        self.root, self.shard, self.version = root, shard, loaded.version
        self.num_shards = len(loaded.manifest["shards"])
        self.metric = loaded.manifest["metric"]
        self.rows = loaded.rows[0]
        # Computed first, CPU or not: it refuses an index whose nprobe/efSearch cannot be set per call.
        params = search_params(loaded.indexes[0], nprobe, ef_search)
        # On a GPU where faiss-gpu and a GPU are there (nprobe then set on this process's copy), else the CPU.
        self.index, self.gpu_resources = on_gpu(loaded.indexes[0], nprobe)
        self.params = None if self.gpu_resources is not None else params
        self.num_frames = index_num_frames(loaded.manifest)
        table = loaded.metadata
        # Only this shard's rows are kept (global row -> fields).
        columns = {f: table.column(f).to_pylist() if f in table.column_names else None for f in HIT_FIELDS}
        self.items = {int(r): {f: (columns[f][r] if columns[f] is not None else None) for f in HIT_FIELDS}
                      for r in self.rows}
        self.row_of = {item["id"]: r for r, item in self.items.items()}

    def search(self, queries: np.ndarray, k: int) -> list[list[dict]]:
        """Each query's best k of this shard, best first: metadata plus `row`, `fast_score`, `shard`."""
        scores, rows = search_shard(self.index, self.rows, queries, k, self.params)
        return [[{**self.items[int(r)], "row": int(r), "fast_score": float(s), "shard": self.shard}
                 for s, r in zip(qs, qr) if r >= 0] for qs, qr in zip(scores, rows)]

    def lookup(self, item_id: str) -> dict | None:
        """{id, uri, media, offset, size} of the item `item_id` if this shard holds it, else None."""
        row = self.row_of.get(item_id)
        if row is None:
            return None
        item = self.items[row]
        return {f: item[f] for f in ("id", "uri", "media", "offset", "size")}

