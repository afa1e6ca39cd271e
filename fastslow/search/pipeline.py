"""One query's flow, written once: encode -> every shard -> merge -> re-rank the head -> the answer.

`answer_query` takes its stages as async callables (`QueryStages`). `SearchPipeline` supplies local
ones over this package's classes and runs the flow in this process, with no event loop; the Serve
ingress (`serve_app/ingress.py`) supplies remote calls with timeouts and degradation. Both answer
with the same JSON shape.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import numpy as np

from fastslow.errors import FastslowError
from fastslow.index.publish import current_version
from fastslow.search.answer import merge_hits, public_hit, reranked_top, search_depth, stage_timings
from fastslow.search.encoder import QueryEncoder
from fastslow.search.filters import check_filter
from fastslow.search.request import SearchRequest, combine
from fastslow.search.reranker import Reranker
from fastslow.search.shard import ShardSearcher

NO_RERANKER = "no re-ranker is configured (slow_checkpoint is empty)"


class NoShardAnswered(FastslowError):
    """Every index shard failed or timed out: there is nothing to answer with."""


class UnknownItem(FastslowError):
    """A `like` query names an id the index version does not hold."""


@dataclass
class QueryStages:
    """The stages of one query. `encode` embeds words, `encode_image` decoded pixels, `item_vector` gives an
    indexed item's vector (None: no such item); `retrieve` gives each answering shard's hits (of the items passing
    the filter) and, per failed shard, why; `rerank` gives Slow's scores of the head (None where an item could not
    be scored), or None and why not."""

    encode: Callable[[str], Awaitable[np.ndarray]]
    retrieve: Callable[[np.ndarray, int, dict | None], Awaitable[tuple[list[list[dict]], dict[str, str]]]]
    rerank: Callable[[str, list[dict]], Awaitable[tuple[list[float | None] | None, str | None]]]
    num_shards: int
    metric: str = "ip"
    fast_weight: float = 0.0
    encode_image: Callable[[np.ndarray], Awaitable[np.ndarray]] | None = None
    item_vector: Callable[[str], Awaitable[np.ndarray | None]] | None = None
    # Slow's attention maps of the words over each hit (None where one has none), or None and why not.
    explain: Callable[[str, list[dict]], Awaitable[tuple[list[dict | None] | None, str | None]]] | None = None


async def query_vector(stages: QueryStages, req: SearchRequest) -> np.ndarray:
    """The vector `req` searches with: its words', its image's or its `like` item's, or words and either
    combined (fastslow.search.request.combine)."""
    text = await stages.encode(req.query) if req.query else None
    visual = None
    if req.image is not None:
        visual = await stages.encode_image(req.image)
    elif req.like is not None:
        visual = await stages.item_vector(req.like)
        if visual is None:
            raise UnknownItem(f"like: no item {req.like[:200]!r} in this index version")
    return combine(text, visual, req.image_weight)


async def answer_query(stages: QueryStages, req: SearchRequest, version: str | None) -> dict:
    """The answer to `req`: results with both scores, whether it was re-ranked or degraded, shards, timings."""
    t0 = time.perf_counter()
    vector = await query_vector(stages, req)
    t1 = time.perf_counter()
    rerank = req.rerank and bool(req.query)  # Slow scores words against items: an image alone is not re-ranked
    depth = search_depth(req.k, rerank, req.rerank_k)
    parts, failed = await stages.retrieve(vector, depth, req.filter)
    if not parts:
        raise NoShardAnswered(f"no index shard answered: {'; '.join(failed.values())}")
    hits = [{**h, "fast_rank": i + 1} for i, h in enumerate(merge_hits(parts, depth, stages.metric))]
    t2 = time.perf_counter()
    degraded, reason, top = False, None, hits[: req.k]
    if rerank and hits:
        scores, reason = await stages.rerank(req.query, hits[: req.rerank_k])
        if scores is None:
            degraded = True
        else:
            top = reranked_top(hits, scores, req.k, req.rerank_k, stages.fast_weight)
    t3 = time.perf_counter()
    results = [public_hit(h, i + 1) for i, h in enumerate(top)]
    timings, explain_reason = stage_timings(t0, t1, t2, t3), None
    if req.explain:
        explain_reason = await _explain(stages, req, rerank and not degraded, top, results)
        timings["explain"] = 1e3 * (time.perf_counter() - t3)  # after the answer's own total: it is extra
    answered = sorted(set(range(stages.num_shards)) - {int(s) for s in failed})
    return {"query": req.query, "query_by": req.query_by, "like": req.like, "results": results,
            "explain_reason": explain_reason,
            "reranked": rerank and not degraded, "degraded": degraded, "degraded_reason": reason,
            "partial": bool(failed), "shards": {"answered": answered, "failed": failed},
            "index_version": version, "timings_ms": timings}


async def _explain(stages: QueryStages, req: SearchRequest, reranked: bool, top: list[dict],
                   results: list[dict]) -> str | None:
    """Put Slow's attention maps on the re-ranked results (`explain` of each); why there are none, else None."""
    if not reranked:
        return "only re-ranked results are explained (the answer was not re-ranked)"
    scored = [i for i, h in enumerate(top) if h.get("slow_score") is not None]
    if stages.explain is None:
        return NO_RERANKER
    maps, reason = await stages.explain(req.query, [top[i] for i in scored])
    if maps is None:
        return reason
    for i, found in zip(scored, maps):
        results[i]["explain"] = found
    return None


def run_local(coro):
    """The result of a coroutine whose awaits all complete at once (local stages), without an event loop, so it
    also runs inside a notebook's running loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a local query stage suspended; local stages must not await real I/O")


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
        self.version = first.version
        self.stages = QueryStages(self._encode, self._retrieve, self._rerank, len(self.shards), first.metric,
                                  fast_weight, self._encode_image, self._item_vector, self._explain)

    def fields(self) -> dict[str, str]:
        """The fields a filter may name in this version (name -> kind), over every shard."""
        return {name: kind for s in self.shards for name, kind in s.fields.kinds().items()}

    async def _encode(self, query: str) -> np.ndarray:
        return self.encoder.encode([query])[0]

    async def _encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self.encoder.encode_images(pixels[None])[0]

    async def _item_vector(self, item_id: str) -> np.ndarray | None:
        return next((v for v in (s.vector(item_id) for s in self.shards) if v is not None), None)

    async def _retrieve(self, vector: np.ndarray, depth: int,
                        filter_spec: dict | None = None) -> tuple[list[list[dict]], dict[str, str]]:
        return [s.search(vector[None], depth, filter_spec)[0] for s in self.shards], {}

    async def _rerank(self, query: str, head: list[dict]) -> tuple[list[float | None] | None, str | None]:
        if self.reranker is None:
            return None, NO_RERANKER
        return self.reranker.score([query], [head])[0], None

    async def _explain(self, query: str, hits: list[dict]) -> tuple[list[dict | None] | None, str | None]:
        try:
            return self.reranker.explain(query, hits), None
        except FastslowError as e:
            return None, str(e)

    def search(self, req: SearchRequest) -> dict:
        """The answer to one query, shaped as the Serve endpoint's; `req.filter` is checked here."""
        req = replace(req, filter=check_filter(req.filter, self.fields()) or None)
        return run_local(answer_query(self.stages, req, self.version))
