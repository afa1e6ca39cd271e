"""The exact-search section of `python -m benchmarks.gpu` (benchmarks/gpu.py): chunked top-k, checked against numpy."""

from __future__ import annotations

from benchmarks.gpu_timing import sig, timed
from fastslow.log import get_logger

log = get_logger("fastslow.benchmarks.gpu")

DIM = 256
TOPK = 10
CHECKED_QUERIES = 16  # queries whose top-k numpy recomputes over the whole gallery
QUERY_NOISE = 0.02  # per-dimension noise on a query's gallery row: cosine ~0.95 to it, ~0.35 at most to others
SCORE_ATOL = {"float16": 2e-3, "float32": 1e-5}  # a top-k score against numpy's float32 (fp16: its rounding)
SCORE_BUDGET = {"cuda": 2 << 30, "cpu": 256 << 20}  # bytes of one (queries, chunk) score block


def topk_chunked(q, gallery, k: int, chunk: int):
    """Exact top-k (values, indices) of q @ gallery.T, a block of `chunk` gallery rows at a time."""
    import torch

    vals, idx = [], []
    for start in range(0, len(gallery), chunk):
        block = gallery[start : start + chunk]
        v, i = (q @ block.T).topk(min(k, len(block)), dim=1)
        vals.append(v)
        idx.append(i + start)
    if len(vals) == 1:
        return vals[0], idx[0]
    v, j = torch.cat(vals, dim=1).topk(min(k, len(gallery)), dim=1)
    return v, torch.cat(idx, dim=1).gather(1, j)


def bench_search(device, vectors: int, n_queries: int, warmup: int, iters: int, chunk: int | None = None) -> dict:
    """Queries/s of exact top-k over `vectors` unit vectors, checked against numpy on the first queries."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    gen = torch.Generator(device=device).manual_seed(0)
    gallery = F.normalize(torch.randn(vectors, DIM, device=device, generator=gen), dim=1)
    target = torch.randint(0, vectors, (n_queries,), device=device, generator=gen)
    queries = F.normalize(gallery[target] + QUERY_NOISE * torch.randn(n_queries, DIM, device=device, generator=gen),
                          dim=1)
    # The reference: numpy float32 brute force over the whole gallery for the first queries.
    checked, k = min(CHECKED_QUERIES, n_queries), min(TOPK, vectors)
    q_np = queries[:checked].cpu().numpy()
    ref_s, ref_i = [], []
    for start in range(0, vectors, 1 << 18):
        s = q_np @ gallery[start : start + (1 << 18)].cpu().numpy().T
        i = np.argpartition(-s, min(k, s.shape[1]) - 1, axis=1)[:, :k]
        ref_s.append(np.take_along_axis(s, i, axis=1))
        ref_i.append(i + start)
    ref_s, ref_i = np.concatenate(ref_s, axis=1), np.concatenate(ref_i, axis=1)
    order = np.argsort(-ref_s, axis=1)[:, :k]
    ref_s, best_i = np.take_along_axis(ref_s, order, axis=1), np.take_along_axis(ref_i, order, axis=1)[:, 0]
    dtypes = [torch.float16, torch.float32] if device.type == "cuda" else [torch.float32]
    rows, exact = [], True
    for dtype in dtypes:
        g, q, name = gallery.to(dtype), queries.to(dtype), str(dtype).split(".")[-1]
        rows_per = min(vectors, chunk or max(1, SCORE_BUDGET[device.type] // (n_queries * g.element_size())))
        with torch.inference_mode():
            s = timed(lambda: topk_chunked(q, g, TOPK, rows_per), device, warmup, iters)
            vals, idx = topk_chunked(q, g, TOPK, rows_per)
        top1 = bool((idx[:checked, 0].cpu().numpy() == best_i).all())
        # The top-k by score, not by index: rounding may swap near-ties (float16 surely), not change the scores.
        topk = bool(np.allclose(vals[:checked].float().cpu().numpy(), ref_s, atol=SCORE_ATOL[name]))
        exact &= top1 and topk
        rows.append({"dtype": name, "chunk": rows_per, "queries_per_s": sig(n_queries / s),
                     "ms_per_batch": sig(1000 * s), "top1_matches_numpy": top1, "topk_scores_match_numpy": topk})
        log.info("search: %s", rows[-1])
        del g
    return {"vectors": vectors, "dim": DIM, "queries": n_queries, "topk": TOPK, "checked_queries": checked,
            "top1_is_source_row": bool((best_i == target[:checked].cpu().numpy()).all()),
            "exact_check": exact, "rows": rows}
