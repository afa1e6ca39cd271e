"""The query path without Ray: encode the text with Fast, search each index shard, merge, re-rank with Slow.

The Serve deployments (`serve_app/`) wrap these same classes one per deployment; `SearchPipeline`
composes them in one process, which is what the Serve answers are tested and benchmarked against.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from fastslow.data.decode import DecodeConfig, decode_sample
from fastslow.data.types import Sample
from fastslow.devices import autocast, best_device
from fastslow.errors import DecodeError, FastslowError
from fastslow.index.publish import current_version, load_version
from fastslow.index.shards import merge_results, on_gpu, search_params, search_shard
from fastslow.models.checkpoint import read_manifest as read_checkpoint
from fastslow.models.fast import FastModel
from fastslow.models.slow import SlowModel
from fastslow.rerank import rerank
from fastslow.runs import load_model
from fastslow.slow_training import slow_features, slow_score_matrix

# What each hit carries from the index's metadata table.
HIT_FIELDS = ("id", "uri", "media", "caption")


def index_num_frames(manifest: dict) -> int:
    """How the index's videos were sampled (frames per video), so candidates are decoded the same way."""
    return int((manifest.get("model") or {}).get("num_frames", DecodeConfig.num_frames))


class QueryEncoder:
    """Fast's text tower: query strings to unit vectors."""

    def __init__(self, checkpoint: str, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = best_device()
        self.model = load_model(checkpoint, FastModel).eval().to(self.device)
        self.weights_sha256 = read_checkpoint(checkpoint)["weights_sha256"]
        self.dim = self.model.config.embed_dim

    @torch.inference_mode()  # a millisecond less than no_grad per query here
    def encode(self, texts: list[str]) -> np.ndarray:
        with autocast(self.device):
            return self.model.encode_text(list(texts)).float().cpu().numpy()


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
        # On a GPU where faiss-gpu and a GPU are there (nprobe then set on this process's copy), else the CPU.
        self.index, self.gpu_resources = on_gpu(loaded.indexes[0], nprobe)
        self.params = None if self.gpu_resources is not None else search_params(self.index, nprobe, ef_search)
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
        """{id, uri, media} of the item `item_id` if this shard holds it, else None."""
        row = self.row_of.get(item_id)
        if row is None:
            return None
        item = self.items[row]
        return {"id": item["id"], "uri": item["uri"], "media": item["media"]}


def merge_hits(parts: list[list[dict]], k: int, metric: str = "ip") -> list[dict]:
    """One query's best k over several shards' hit lists (the order `merge_results` gives: score, then row)."""
    hits = [h for part in parts for h in part]
    if not hits:
        return []
    scores = np.array([[h["fast_score"] for h in hits]], dtype=np.float64)
    rows = np.array([[h["row"] for h in hits]], dtype=np.int64)
    by_row = {h["row"]: h for h in hits}
    _, best = merge_results([(scores, rows)], k, metric)
    return [by_row[int(r)] for r in best[0] if r >= 0]


class ItemFeatures:
    """Slow's visual features of items, decoded from their URIs on first use and kept in an LRU cache."""

    def __init__(self, model: SlowModel, num_frames: int = DecodeConfig.num_frames, capacity: int = 20000):
        self.model, self.capacity = model, capacity
        self.decode = DecodeConfig(image_size=model.config.vision.image_size, num_frames=num_frames)
        self.cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, hits: list[dict]) -> tuple[torch.Tensor, list[str]]:
        """(features of the hits that decode, stacked in order; an error per hit, '' where it decoded)."""
        errors, out, missing = [""] * len(hits), [None] * len(hits), {}
        with self.lock:
            for i, h in enumerate(hits):
                key = (h["media"], h["uri"])
                if key in self.cache:
                    self.cache.move_to_end(key)
                    out[i] = self.cache[key]
                else:
                    missing.setdefault(key, []).append(i)
        if missing:
            pixels, keys = [], []
            for key, where in missing.items():
                try:
                    pixels.append(decode_sample(Sample(id=hits[where[0]]["id"], media=key[0], uri=key[1],
                                                       captions=[]), self.decode))
                    keys.append(key)
                except DecodeError as e:
                    for i in where:
                        errors[i] = f"{key[1]}: {e}"
            by_shape: dict[tuple, list[int]] = {}
            for j, p in enumerate(pixels):
                by_shape.setdefault(p.shape, []).append(j)
            for js in by_shape.values():
                feats = slow_features(self.model, np.stack([pixels[j] for j in js]))
                with self.lock:
                    for j, f in zip(js, feats):
                        self.cache[keys[j]] = f
                        for i in missing[keys[j]]:
                            out[i] = f
                    while len(self.cache) > self.capacity:
                        self.cache.popitem(last=False)
        good = [f for f in out if f is not None]
        return (torch.stack(good) if good else torch.zeros(0)), errors


class Reranker:
    """Slow scores each query's candidates, in one pass over all queries of a batch."""

    def __init__(self, checkpoint: str, num_frames: int = DecodeConfig.num_frames, cache_items: int = 20000,
                 threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = best_device()
        self.model = load_model(checkpoint, SlowModel).eval().to(self.device)
        self.features = ItemFeatures(self.model, num_frames, cache_items)

    def score(self, queries: list[str], candidates: list[list[dict]]) -> list[list[float | None]]:
        """Slow score of each candidate of each query (None for an item whose media could not be decoded)."""
        flat = [h for hits in candidates for h in hits]
        feats, errors = self.features.get(flat)
        decoded = np.array([not e for e in errors], dtype=bool)
        position = np.cumsum(decoded) - 1  # flat candidate -> row of feats
        width = max((len(h) for h in candidates), default=0)
        grid = np.zeros((len(queries), width), dtype=np.int64)
        valid = np.zeros((len(queries), width), dtype=bool)
        start = 0
        for q, hits in enumerate(candidates):
            span = slice(start, start + len(hits))
            grid[q, : len(hits)] = np.where(decoded[span], position[span], 0)
            valid[q, : len(hits)] = decoded[span]
            start += len(hits)
        scores = np.zeros(grid.shape)
        if valid.any():
            # Padding and undecodable slots score item 0 and are masked out below.
            with autocast(self.device):
                scores = slow_score_matrix(self.model, feats, list(queries), torch.from_numpy(grid))
        return [[float(scores[q, c]) if valid[q, c] else None for c in range(len(hits))]
                for q, hits in enumerate(candidates)]


def apply_rerank(hits: list[dict], slow_scores: list[float | None], k: int, fast_weight: float = 0.0) -> list[dict]:
    """The top k: candidates with a Slow score in the fused order, then those without one in Fast order."""
    scored = [(h, s) for h, s in zip(hits, slow_scores) if s is not None]
    unscored = [{**h, "slow_score": None} for h, s in zip(hits, slow_scores) if s is None]
    if not scored:
        return unscored[:k]
    fast = np.array([[h["fast_score"] for h, _ in scored]])
    slow = np.array([[s for _, s in scored]])
    order = rerank(np.arange(len(scored))[None], fast, slow, fast_weight=fast_weight).indices[0]
    ranked = [{**scored[i][0], "slow_score": scored[i][1]} for i in order]
    return (ranked + unscored)[:k]


def search_depth(k: int, rerank: bool, rerank_k: int) -> int:
    """How many of Fast's best a request needs: k, or rerank_k when more are re-ranked."""
    return max(k, rerank_k if rerank else 0)


def reranked_top(hits: list[dict], slow_scores: list[float | None], k: int, rerank_k: int,
                 fast_weight: float = 0.0) -> list[dict]:
    """Fast's first rerank_k `hits` (those `slow_scores` score) in the fused order, then Fast's order: k in all."""
    top = apply_rerank(hits[:rerank_k], slow_scores, k, fast_weight)
    return top + [{**h, "slow_score": None} for h in hits[rerank_k:]][: k - len(top)]


def stage_timings(t0: float, t1: float, t2: float, t3: float) -> dict:
    """Milliseconds per stage from perf_counter marks: before encoding, after it, after retrieval, at the end."""
    return {"encode": 1e3 * (t1 - t0), "retrieve": 1e3 * (t2 - t1), "rerank": 1e3 * (t3 - t2),
            "total": 1e3 * (t3 - t0)}


def public_hit(hit: dict, rank: int) -> dict:
    """What an answer shows of a hit."""
    return {"rank": rank, "id": hit["id"], "uri": hit["uri"], "media": hit["media"], "caption": hit["caption"],
            "fast_score": hit["fast_score"], "slow_score": hit.get("slow_score"), "shard": hit["shard"]}


@dataclass
class SearchRequest:
    query: str
    k: int = 10
    rerank: bool = True
    rerank_k: int = 20


class SearchPipeline:
    """Every stage in one process: the reference the Serve graph must equal, and its overhead baseline."""

    def __init__(self, index_root: str, fast_checkpoint: str, slow_checkpoint: str | None,
                 version: str | None = None, fast_weight: float = 0.0, nprobe: int | None = None,
                 ef_search: int | None = None):
        self.encoder = QueryEncoder(fast_checkpoint)
        version = version or current_version(index_root)

        def shard(s: int) -> ShardSearcher:
            return ShardSearcher(index_root, s, version, self.encoder.dim, self.encoder.weights_sha256, nprobe,
                                 ef_search)

        first = shard(0)
        self.shards = [first] + [shard(s) for s in range(1, first.num_shards)]
        self.reranker = Reranker(slow_checkpoint, first.num_frames) if slow_checkpoint else None
        self.fast_weight = fast_weight

    def search(self, req: SearchRequest) -> dict:
        t0 = time.perf_counter()
        vec = self.encoder.encode([req.query])
        t1 = time.perf_counter()
        depth = search_depth(req.k, req.rerank, req.rerank_k)
        hits = merge_hits([s.search(vec, depth)[0] for s in self.shards], depth, self.shards[0].metric)
        t2 = time.perf_counter()
        if req.rerank:
            if self.reranker is None:
                raise FastslowError("re-ranking asked for but no Slow checkpoint is loaded")
            scores = self.reranker.score([req.query], [hits[: req.rerank_k]])[0]
            top = reranked_top(hits, scores, req.k, req.rerank_k, self.fast_weight)
        else:
            top = hits[: req.k]
        t3 = time.perf_counter()
        return {"results": [public_hit(h, i + 1) for i, h in enumerate(top)], "index_version": self.shards[0].version,
                "timings_ms": stage_timings(t0, t1, t2, t3)}

