"""Like-for-like timings of the benchmark table's methods: one query's latency at batch 1, and batched throughput.

Each method answers a list of query texts as a search service would, through the same scoring functions as the
table's results: Fast encodes the texts and takes each one's top items by dot product over the gallery (`fast_topk`);
Slow over all scores every (text, item) pair (`slow_score_matrix`) and orders the gallery; Fast then Slow takes
Fast's top K, scores those K with Slow and orders them (`rerank`). Latency is the median wall time of one query
answered alone, over a sample of queries; throughput is queries per second when the same rules answer a sample in
batches of `batch` queries, every stage of every method batched alike. The gallery's Fast embeddings and Slow's
visual features of the items are computed before timing (an index holds them); Slow's cross-attention keys and
values are computed in each call from those features, as the serving re-ranker does.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fastslow.errors import FastslowError
from fastslow.inference.slow_scores import slow_score_matrix
from fastslow.rerank import fast_topk, rerank

Answer = Callable[[list[str]], np.ndarray]  # query texts -> each one's result list (gallery indices, best first)
SHOWN = 10  # results a query returns: R@10 needs the first ten


@dataclass
class TimingConfig:
    """How the table times its methods (configs/benchmark/table.yaml: a size's `timing`)."""

    latency_queries: int = 64  # queries timed one at a time (batch 1); the median is reported
    throughput_queries: int = 512  # queries answered in batches for queries/s
    batch: int = 64  # queries per batch, for every stage of every method
    repeats: int = 3  # batched passes over the sample; the median is reported (a busy machine slows some)

    def __post_init__(self):
        for name in ("latency_queries", "throughput_queries", "batch", "repeats"):
            if getattr(self, name) < 1:
                raise FastslowError(f"timing.{name} = {getattr(self, name)}: must be at least 1")


def fast_answer(model, gallery: torch.Tensor) -> Answer:
    """Fast alone: encode the texts, the top SHOWN items of the gallery by dot product."""
    def answer(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return fast_topk(model.encode_text(texts), gallery, SHOWN)[1]
    return answer


def slow_answer(slow, features: torch.Tensor) -> Answer:
    """Slow over all: every (text, item) pair scored, the gallery ordered by Slow's score."""
    everything = torch.arange(len(features))

    def answer(texts: list[str]) -> np.ndarray:
        candidates = everything.expand(len(texts), len(everything))
        scores = slow_score_matrix(slow, features, texts, candidates)
        return rerank(candidates.numpy(), np.zeros_like(scores), scores, SHOWN).indices
    return answer


def rerank_answer(model, gallery: torch.Tensor, slow, features: torch.Tensor, k: int) -> Answer:
    """Fast then Slow: Fast's top k of each text, scored by Slow and ordered by its score (the table's fusion: none)."""
    def answer(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            fast_scores, candidates = fast_topk(model.encode_text(texts), gallery, k)
        scores = slow_score_matrix(slow, features, texts, torch.from_numpy(candidates))
        return rerank(candidates, fast_scores, scores, SHOWN).indices
    return answer


def latency_ms(answer: Answer, texts: list[str]) -> float:
    """Median ms of one query answered alone, over `texts` (after one untimed warm-up query)."""
    answer(texts[:1])
    times = []
    for text in texts:
        t0 = time.perf_counter()
        answer([text])
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def queries_per_s(answer: Answer, texts: list[str], batch: int, repeats: int = 1) -> float:
    """Queries per second answering `texts` in batches of `batch`, the median of `repeats` passes (after one untimed
    warm-up batch)."""
    answer(texts[:batch])
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for start in range(0, len(texts), batch):
            answer(texts[start : start + batch])
        seconds.append(time.perf_counter() - t0)
    return len(texts) / statistics.median(seconds)


def spread(texts: list[str], n: int) -> list[str]:
    """`n` of the texts (all if fewer), evenly spread over the list so that no run of similar items dominates."""
    if n >= len(texts):
        return list(texts)
    return [texts[i] for i in np.linspace(0, len(texts) - 1, n).round().astype(int)]


def add_timings(timed: list[tuple[dict, Answer]], texts: list[str], cfg: TimingConfig, slow_row: dict) -> None:
    """Set every row's `latency_ms` and `queries_per_s` (the same query sample for every method), and each
    re-ranking row's speed-ups over Slow over all from those like-for-like figures."""
    one_at_a_time, batched = spread(texts, cfg.latency_queries), spread(texts, cfg.throughput_queries)
    exact = {}
    for row, answer in timed:
        exact[id(row)] = latency_ms(answer, one_at_a_time), queries_per_s(answer, batched, cfg.batch, cfg.repeats)
        row["latency_ms"] = round(exact[id(row)][0], 4)
        row["queries_per_s"] = round(exact[id(row)][1], 1)
    slow_latency, slow_qps = exact[id(slow_row)]
    for row, _ in timed:
        if row.get("k") is not None:
            row["speedup_latency"] = round(slow_latency / exact[id(row)][0], 2)
            row["speedup_throughput"] = round(exact[id(row)][1] / slow_qps, 2)


def timing_summary(cfg: TimingConfig, texts: list[str], device: str) -> dict:
    """What the timings covered, for the table's JSON."""
    return {"latency_queries": len(spread(texts, cfg.latency_queries)),
            "throughput_queries": len(spread(texts, cfg.throughput_queries)), "batch": cfg.batch,
            "repeats": cfg.repeats,
            "device": device, "torch_threads": torch.get_num_threads()}
