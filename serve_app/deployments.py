"""The Serve deployments behind the ingress: query encoder, one retriever per index shard, Slow re-ranker.

Each wraps the Ray-free class of `fastslow.search` that does the work; what is here is Serve's part
(replicas, batching across concurrent requests, versions held while a new one is swapped in).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from ray import serve

from fastslow.errors import FastslowError
from fastslow.log import get_logger
from fastslow.search.encoder import QueryEncoder
from fastslow.search.reranker import Reranker
from fastslow.search.shard import ShardSearcher
from serve_app import metrics
from serve_app.config import ServeAppConfig

log = get_logger("fastslow.serve")

# Versions a retriever replica holds at once: the live one and the one being swapped in or out.
KEEP_VERSIONS = 2


@serve.deployment(max_ongoing_requests=32, max_queued_requests=256, ray_actor_options={"num_cpus": 0.25})
class QueryEncoderDeployment:
    """Fast's text tower; concurrent queries are encoded as one batch."""

    def __init__(self, cfg: ServeAppConfig):
        self.encoder = QueryEncoder(cfg.fast_checkpoint, threads=cfg.torch_threads)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def encode(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.encoder.encode(texts))

    async def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """A decoded image (as the ingress decodes an upload) to its unit vector."""
        return await asyncio.to_thread(lambda: self.encoder.encode_images(pixels[None])[0])


@serve.deployment(max_ongoing_requests=32, max_queued_requests=256, ray_actor_options={"num_cpus": 0.25})
class ShardRetriever:
    """Shard `shard` of the index; answers for the version the ingress names, loading it on first use."""

    def __init__(self, cfg: ServeAppConfig, shard: int, version: str, dim: int, model_sha256: str):
        self.cfg, self.shard, self.dim, self.model_sha256 = cfg, shard, dim, model_sha256
        self.versions: dict[str, ShardSearcher] = {}
        self.lock = asyncio.Lock()
        self._load_sync(version)

    def _load_sync(self, version: str) -> ShardSearcher:
        started = time.perf_counter()
        searcher = ShardSearcher(self.cfg.index_root, self.shard, version, self.dim, self.model_sha256,
                                 nprobe=self.cfg.nprobe or None, ef_search=self.cfg.ef_search or None)
        self.versions[version] = searcher
        while len(self.versions) > KEEP_VERSIONS:
            self.versions.pop(next(iter(self.versions)))  # the oldest
        log.info("shard %d: version %s loaded (%d items) in %.2f s", self.shard, version, searcher.index.ntotal,
                 time.perf_counter() - started)
        return searcher

    async def load(self, version: str) -> int:
        """Hold `version` (loading it once, off the event loop, while the others keep answering); its size."""
        if version not in self.versions:
            async with self.lock:
                if version not in self.versions:
                    await asyncio.to_thread(self._load_sync, version)
        return int(self.versions[version].index.ntotal)

    async def search(self, vector: np.ndarray, k: int, version: str, filter_spec: dict | None = None) -> list[dict]:
        """The query's best k hits of this shard in `version`, of the items passing `filter_spec` (checked)."""
        if version not in self.versions:
            await self.load(version)
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if filter_spec:  # alone, off the event loop: its mask and any exact scan take longer than a plain search
            return await asyncio.to_thread(lambda: self.versions[version].search(vector, k, filter_spec)[0])
        return await self._search((vector[0], k, version))

    # No waiting for a batch to fill: a lone query goes at once, and queries that arrive while one is
    # searched go together next.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _search(self, requests: list[tuple[np.ndarray, int, str]]) -> list[list[dict]]:
        # Concurrent queries go to FAISS as one matrix (per version), at the largest k asked for; an
        # exact top k is the first k of a deeper one.
        out: list[list[dict]] = [[] for _ in requests]
        by_version: dict[str, list[int]] = {}
        for i, (_, _, version) in enumerate(requests):
            by_version.setdefault(version, []).append(i)
        for version, idx in by_version.items():
            searcher = self.versions.get(version) or self._load_sync(version)
            hits = searcher.search(np.stack([requests[i][0] for i in idx]), max(requests[i][1] for i in idx))
            for i, h in zip(idx, hits):
                out[i] = h[: requests[i][1]]
        return out

    async def lookup(self, item_id: str, version: str) -> dict | None:
        """{id, uri, media} of `item_id` if this shard holds it in `version`, else None."""
        if version not in self.versions:
            await self.load(version)
        return self.versions[version].lookup(item_id)

    async def vector(self, item_id: str, version: str) -> np.ndarray | None:
        """The vector of `item_id` if this shard holds it in `version`, else None."""
        if version not in self.versions:
            await self.load(version)
        return self.versions[version].vector(item_id)

    async def fields(self, version: str) -> dict[str, dict]:
        """The fields a filter may name in this shard of `version` (ItemFields.describe)."""
        if version not in self.versions:
            await self.load(version)
        return await asyncio.to_thread(self.versions[version].describe_fields)

    async def ready(self, version: str) -> bool:
        return version in self.versions


# Queue bounds, autoscaling and user_config (the fault knob for drills and tests: {"fault": "error"} fails every
# call, {"fault": "slow"} stalls) are set in the Serve config YAML's `deployments:` only (configs/serve_synth.yaml).
@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class SlowReranker:
    """The Slow model; the candidates of concurrent requests are scored in one pass."""

    def __init__(self, cfg: ServeAppConfig, num_frames: int):
        self.reranker = Reranker(cfg.slow_checkpoint, num_frames, cfg.cache_mb, threads=cfg.torch_threads)
        self.fault: str | None = None
        self.stall_s = 2 * cfg.rerank_timeout_s
        self.waiting = 0  # requests in this replica, waiting for a batch or being scored (a metric)

    def reconfigure(self, user_config: dict) -> None:
        fault = (user_config or {}).get("fault")
        if fault not in (None, "error", "slow"):
            raise FastslowError(f"SlowReranker user_config.fault: {fault!r} is not one of null, error, slow")
        self.fault = fault

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _score(self, requests: list[tuple[str, list[dict]]]) -> list[list[float | None]]:
        queries = [q for q, _ in requests]
        candidates = [c for _, c in requests]
        # Off the event loop, so requests keep queueing into the next batch while this one scores.
        return await asyncio.to_thread(self.reranker.score, queries, candidates)

    async def score(self, query: str, candidates: list[dict]) -> list[float | None]:
        self.waiting += 1
        metrics.METRICS.queue(self.waiting)
        try:
            if self.fault == "error":
                raise RuntimeError("fault injected: re-ranker error")
            if self.fault == "slow":
                await asyncio.sleep(self.stall_s)
            return await self._score((query, candidates))
        finally:
            self.waiting -= 1
            metrics.METRICS.queue(self.waiting)

    async def explain(self, query: str, hits: list[dict]) -> list[dict | None]:
        """Slow's attention maps of `query` over each hit (Reranker.explain), off the event loop."""
        return await asyncio.to_thread(self.reranker.explain, query, hits)

    async def ready(self) -> bool:
        return self.fault is None
