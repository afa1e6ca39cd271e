"""How one query's answer is put together from the stages' outputs: merge shards, re-rank the head, shape hits."""

from __future__ import annotations

import json

import numpy as np

from fastslow.index.shards import merge_results
from fastslow.rerank import rerank


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
    return {"rank": rank, "id": hit["id"], "location": hit.get("location") or hit["id"], "media": hit["media"],
            "caption": hit["caption"], "metadata": json.loads(hit["metadata"]) if hit.get("metadata") else {},
            "fast_score": hit["fast_score"], "slow_score": hit.get("slow_score"), "fast_rank": hit.get("fast_rank"),
            "shard": hit["shard"]}

