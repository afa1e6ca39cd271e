"""The search setting chosen when a version is built (IVF `nprobe`, HNSW `efSearch`), which its replicas use
unless the app overrides it.

The setting is the smallest one whose recall@10 against exact search reaches `index.target_recall`, measured on
`index.tune_queries` of the collection's own vectors, each searched leave-one-out (its own row is not counted, in
the exact answer or the approximate one), through the shards and the merge as a query is served. Each shard
measures its own part (`shard_part`: its exact and approximate top k+1 of the queries, from its raw vectors and its
index), wherever it is built, and `choose_setting` merges the parts: no process needs all vectors.
"""

from __future__ import annotations

import numpy as np

from fastslow.index.shards import IndexSpec, import_faiss, merge_results, search_params, search_shard
from fastslow.log import get_logger

log = get_logger(__name__)

RECALL_AT = 10
EF_SEARCH_MAX = 4096


def setting_of(index) -> tuple[str | None, list[int]]:
    """The setting that trades recall for speed in `index` ('nprobe' or 'ef_search', None for exact or
    fixed-cost indexes) and the values to try, smallest first."""
    faiss = import_faiss()

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        values = [2 ** i for i in range(int(np.log2(ivf.nlist)) + 1)]
        return "nprobe", values + ([ivf.nlist] if values[-1] != ivf.nlist else [])
    if search_params(index, ef_search=16) is not None:
        return "ef_search", [2 ** i for i in range(4, int(np.log2(EF_SEARCH_MAX)) + 1)]
    return None, []


def query_rows(items: int, spec: IndexSpec) -> np.ndarray:
    """The global rows whose vectors are the measurement's queries (seeded, sorted)."""
    rng = np.random.default_rng(spec.seed + 1)
    return np.sort(rng.choice(items, min(spec.tune_queries, items), replace=False))


def shard_part(index, rows: np.ndarray, vectors: np.ndarray, queries: np.ndarray, metric: str, k: int) -> dict:
    """One shard's part of the measurement: {'exact': (scores, rows), value: (scores, rows) for each setting}, each
    the shard's best k+1 for every query (k+1: the query's own row is dropped after the merge). `vectors` are the
    shard's raw vectors, in its order (rows[j] for vectors[j])."""
    faiss = import_faiss()

    name, values = setting_of(index)
    keys = values or [None]  # None: an index with nothing to set, searched as it is
    fetch = min(k + 1, len(rows))
    if fetch == 0:
        empty = (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64))
        return {"exact": empty, **{v: empty for v in keys}}
    scores, positions = faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(vectors, np.float32),
                                  fetch, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    part = {"exact": (scores, np.where(positions >= 0, rows[np.clip(positions, 0, None)], -1))}
    exact = np.sort(part["exact"][1], axis=1)
    for i, value in enumerate(keys):
        params = search_params(index, **({name: value} if name else {}))
        part[value] = search_shard(index, rows, queries, k + 1, params)
        if part[value][1].shape == exact.shape and (np.sort(part[value][1], axis=1) == exact).all():
            # Every query's exact neighbours found: a larger setting searches more and finds the same ones.
            part.update({v: part[value] for v in keys[i + 1:]})
            break
    return part


def _recall(found: np.ndarray, truth: np.ndarray, queries: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[f != q][:k].tolist()) & set(t[t != q][:k].tolist())) for q, f, t in zip(queries, found, truth))
    return hits / (len(queries) * k)


def choose_setting(parts: list[dict], rows_of_queries: np.ndarray, metric: str, spec: IndexSpec, name: str | None,
                   values: list[int]) -> dict:
    """The manifest's `search` entry from every shard's part: {'nprobe' or 'ef_search': value, 'recall_at_10',
    'target_recall', 'queries'}; without a setting (exact or fixed-cost indexes), the recall alone."""
    k = min(RECALL_AT, max(1, sum(p["exact"][1].shape[1] for p in parts) - 1))
    _, truth = merge_results([p["exact"] for p in parts], k + 1, metric)
    entry = {"target_recall": spec.target_recall, "queries": int(len(rows_of_queries))}
    for value in (values or [None]):
        _, found = merge_results([p[value] for p in parts], k + 1, metric)
        recall = _recall(found, truth, rows_of_queries, k)
        if name is None:
            return {**entry, "recall_at_10": round(recall, 4)}
        if recall >= spec.target_recall:
            break
    else:
        log.warning("%s: no %s up to %d reaches recall@%d %.2f (%.3f there): using %d", spec.factory, name, value,
                    RECALL_AT, spec.target_recall, recall, value)
    log.info("search setting: %s %d (recall@%d %.3f on %d held-out queries, target %.2f)", name, value, RECALL_AT,
             recall, len(rows_of_queries), spec.target_recall)
    return {**entry, name: int(value), "recall_at_10": round(recall, 4)}


def choose_search_setting(indexes: list, rows: list[np.ndarray], vectors: np.ndarray, spec: IndexSpec) -> dict:
    """choose_setting for shards built in this process from `vectors` (global row order); {} when not measured
    (target_recall 0, or a single item)."""
    if spec.target_recall <= 0 or len(vectors) < 2:
        return {}
    chosen = query_rows(len(vectors), spec)
    queries = np.ascontiguousarray(vectors[chosen], dtype=np.float32)
    parts = [shard_part(ix, r, vectors[r], queries, spec.metric, RECALL_AT) for ix, r in zip(indexes, rows)]
    return choose_setting(parts, chosen, spec.metric, spec, *setting_of(indexes[0]))
