"""A FAISS index split into S shards: built from (id, vector) rows, searched per call, merged.

An item's shard is a hash of its id, so the same items give the same shards whatever order
they arrive in (a resumed build equals an uninterrupted one). Every shard holds its rows in
id order; `rows[s][j]` names the item at position j of shard s. Index types that need
training (IVF, PQ) are trained once, on a sample of all vectors, and every shard starts from
that trained, empty index, so the shards agree on their coarse quantizer.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np

from fastslow.errors import FastslowError
from fastslow.log import get_logger

log = get_logger(__name__)

METRICS = ("ip", "l2")
TIE_FETCH = 256  # at most this many results past k are fetched to order a tie at the k-th place by row
# `auto`: exact search below this many items, an inverted file above. Exact search reads every vector per query:
# at 200,000 items of 256 dimensions, 8 ms (best) to 17 ms (median) for one query on one core of the 2-core machine.
EXACT_BELOW = 200_000
TRAIN_PER_LIST = 39  # FAISS warns below 39 training vectors per IVF list


def import_faiss():
    """The `faiss` module, or a one-line error naming the extras that install it."""
    try:
        import faiss
    except ImportError as e:
        # FAISS is in no base dependency: its CPU and GPU builds install the same module (pyproject.toml).
        raise FastslowError(f"FAISS is not installed ({e}): pip install -e '.[cpu]' (faiss-cpu), or on a GPU node "
                            "pip install -e '.[gpu]' (faiss-gpu-cu12), never both") from None
    return faiss


@dataclass
class IndexSpec:
    """How to index: FAISS factory string, metric, number of shards, training sample size, and the recall that the
    search setting recorded with a version must reach (fastslow.index.tuning)."""

    factory: str = "auto"  # any FAISS factory string; auto: by the collection's size (resolve_factory)
    metric: str = "ip"  # ip: inner product of unit vectors (cosine); l2: squared distance
    shards: int = 1
    train_sample: int = 100_000
    seed: int = 0
    target_recall: float = 0.95  # recall@10 against exact search that the recorded nprobe/efSearch reaches; 0: off
    tune_queries: int = 1000  # held-out queries (the collection's own vectors, leave-one-out) it is measured on

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise FastslowError(f"index.metric: unknown value {self.metric!r} (expected one of {', '.join(METRICS)})")
        if self.shards < 1:
            raise FastslowError(f"index.shards: must be at least 1, got {self.shards}")
        if self.train_sample < 1:
            raise FastslowError(f"index.train_sample: must be positive, got {self.train_sample}")
        if not 0 <= self.target_recall <= 1:
            raise FastslowError(f"index.target_recall: must be in [0, 1] (0: not measured), got {self.target_recall}")
        if self.tune_queries < 1:
            raise FastslowError(f"index.tune_queries: must be positive, got {self.tune_queries}")


def resolve_factory(factory: str, items: int, train_sample: int) -> str:
    """`factory` itself, or for `auto` the one for `items` vectors: Flat below EXACT_BELOW, else IVF{nlist},Flat
    with nlist the power of two nearest 4·sqrt(items) (FAISS's guideline is 4 to 16·sqrt(N)) that the training
    sample can still train."""
    if factory != "auto":
        return factory
    if items < EXACT_BELOW:
        return "Flat"
    nlist = 2 ** round(np.log2(4 * np.sqrt(items)))
    while nlist > 1 and nlist * TRAIN_PER_LIST > min(items, train_sample):
        nlist //= 2
    return f"IVF{nlist},Flat"


def resolved(spec: IndexSpec, items: int) -> IndexSpec:
    """`spec` with its factory resolved for a collection of `items` (unchanged unless `auto`)."""
    return dataclasses.replace(spec, factory=resolve_factory(spec.factory, items, spec.train_sample))


def shard_of(item_id: str, shards: int) -> int:
    """The shard an id belongs to (stable across runs and machines)."""
    return zlib.crc32(item_id.encode("utf-8")) % shards


def _faiss_metric(metric: str):
    faiss = import_faiss()

    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def empty_index(spec: IndexSpec, dim: int, train_vectors):
    """An empty index of `spec.factory`, trained on `train_vectors` (an array, or a function that reads it) when
    the type needs training."""
    faiss = import_faiss()

    try:
        index = faiss.index_factory(dim, spec.factory, _faiss_metric(spec.metric))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "invalid"
        raise FastslowError(f"index.factory {spec.factory!r}: FAISS cannot build it ({first})") from None
    try:
        search_params(index)  # refuses, before training, an index whose search settings cannot be set per call
    except FastslowError as e:
        raise FastslowError(f"index.factory {spec.factory!r}: {e}") from None
    if not index.is_trained:
        train_vectors = train_vectors() if callable(train_vectors) else train_vectors
        rng = np.random.default_rng(spec.seed)
        take = min(len(train_vectors), spec.train_sample)
        sample = train_vectors[np.sort(rng.choice(len(train_vectors), take, replace=False))]
        try:
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
        except RuntimeError as e:
            lines = str(e).strip().splitlines()
            raise FastslowError(f"index.factory {spec.factory!r}: training on {take} vectors failed "
                                f"({lines[-1] if lines else e})") from None
    return index


def add_rows(index, vectors: np.ndarray) -> None:
    """Add rows at positions 0, 1, ...; an IDMap index is given those positions as its ids."""
    faiss = import_faiss()

    if isinstance(faiss.downcast_index(index), (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index.add_with_ids(vectors, np.arange(index.ntotal, index.ntotal + len(vectors), dtype=np.int64))
    else:
        index.add(vectors)


def build_shards(ids: list[str], vectors: np.ndarray, spec: IndexSpec) -> tuple[list, list[np.ndarray]]:
    """(one FAISS index per shard, the global row numbers each shard holds, in its order).

    Rows are positions in `ids`; within a shard they are ordered by id.
    """
    faiss = import_faiss()

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    spec = resolved(spec, len(ids))
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise FastslowError(f"build_shards: {len(ids)} ids but vectors of shape {vectors.shape}")
    if len(set(ids)) != len(ids):
        raise FastslowError("build_shards: ids are not unique")
    trained = empty_index(spec, vectors.shape[1], vectors)
    assignment = np.array([shard_of(i, spec.shards) for i in ids], dtype=np.int64)
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    indexes, rows = [], []
    for s in range(spec.shards):
        members = order[assignment[order] == s]
        index = faiss.clone_index(trained)
        if len(members):
            add_rows(index, vectors[members])
        indexes.append(index)
        rows.append(members.astype(np.int64))
    return indexes, rows


def _refuse(ix, why: str):
    raise FastslowError(f"{type(ix).__name__}: FAISS cannot take its search parameters per call ({why}), so "
                        "nprobe/efSearch would be silently ignored; use Flat, IVF…, HNSW…, PQ… or SQ…, optionally "
                        "under OPQ/PCA, IDMap or RFlat/Refine")


def search_params(index, nprobe: int | None = None, ef_search: int | None = None):
    """Per-call FAISS search parameters for `index`, reaching through OPQ/PCA transforms, RFlat/Refine and IDMap to
    the IVF or HNSW inside (None when nothing applies); a FastslowError for an index whose settings FAISS cannot
    take per call.

    Passed to `index.search(..., params=...)`: a shared index is never mutated per query.
    """
    faiss = import_faiss()

    ix = faiss.downcast_index(index)
    if isinstance(ix, faiss.IndexPreTransform):
        inner = search_params(ix.index, nprobe, ef_search)
        return None if inner is None else faiss.SearchParametersPreTransform(index_params=inner)
    if isinstance(ix, faiss.IndexRefine):
        if search_params(ix.refine_index, 1, 1) is not None:
            _refuse(ix, "its refine index is approximate and takes no per-call parameters")
        inner = search_params(ix.base_index, nprobe, ef_search)
        # k_factor: the index's own, as FAISS uses the parameters' value in place of it.
        return None if inner is None else faiss.IndexRefineSearchParameters(base_index_params=inner,
                                                                             k_factor=ix.k_factor)
    if isinstance(ix, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return search_params(ix.index, nprobe, ef_search)  # IDMap hands its parameters to the index it wraps
    if isinstance(ix, faiss.IndexIVF):
        quantizer = search_params(ix.quantizer, None, ef_search)  # an HNSW coarse quantizer (IVF…_HNSW…)
        if nprobe is None and quantizer is None:
            return None
        probes = ix.nprobe if nprobe is None else nprobe
        if quantizer is None:
            return faiss.SearchParametersIVF(nprobe=probes)
        return faiss.SearchParametersIVF(nprobe=probes, quantizer_params=quantizer)
    if isinstance(ix, faiss.IndexHNSW):
        return None if ef_search is None else faiss.SearchParametersHNSW(efSearch=ef_search)
    if isinstance(ix, (faiss.IndexNSG, faiss.IndexNNDescent)):
        _refuse(ix, "its search_L is set on the index only")
    if faiss.try_extract_index_ivf(ix) is not None or hasattr(ix, "index") or hasattr(ix, "base_index"):
        _refuse(ix, "a wrapper fastslow does not reach through")
    return None  # Flat, PQ, SQ, LSH, fast-scan ...: nothing to set


def prepare_vectors(index) -> None:
    """Make `item_vectors` possible on `index` (an IVF inside it gets its direct map: 8 bytes per item), once, at
    load: it changes the index, so never while it is searched."""
    faiss = import_faiss()

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()


def item_vectors(index, positions: np.ndarray) -> np.ndarray:
    """(n, d) float32: the vectors FAISS holds at `positions` of a shard (prepared by `prepare_vectors`): the
    vectors added for Flat, HNSW and IVF…,Flat; as decoded from their codes for PQ and SQ; PCA's inverse."""
    faiss = import_faiss()

    ix = faiss.downcast_index(index)
    if isinstance(ix, faiss.IndexIDMap) and not isinstance(ix, faiss.IndexIDMap2):
        ix = ix.index  # its ids are the positions (add_rows), in the order of the index it wraps
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    if not len(positions):
        return np.zeros((0, index.d), np.float32)
    return np.asarray(ix.reconstruct_batch(positions), dtype=np.float32)


def on_gpu(index, nprobe: int | None = None):
    """(index, gpu resources): a GPU copy of `index` where faiss-gpu is installed and a GPU is visible, with its
    nprobe set on the copy (this process's own, so no per-call parameters are needed), else `index` and None.
    Index types FAISS cannot move to a GPU (HNSW, ...), or whose copy does not take nprobe, stay on the CPU."""
    faiss = import_faiss()

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return index, None
    resources = faiss.StandardGpuResources()  # must outlive the GPU index: kept by the caller
    try:
        gpu = faiss.index_cpu_to_gpu(resources, 0, index)
        if nprobe and faiss.try_extract_index_ivf(index) is not None:
            # ParameterSpace reaches through transforms, IDMap and Refine to the (GPU) IVF, as search_params does.
            faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", nprobe)
    except RuntimeError as e:
        log.info("index stays on the CPU (%s)", str(e).splitlines()[0][:120])
        return index, None
    return gpu, resources


def _ties_by_row(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The column order that keeps FAISS's best-first order but puts equal scores in row order (missing last)."""
    group = np.concatenate([np.zeros((len(scores), 1), np.int64),
                            np.cumsum(scores[:, 1:] != scores[:, :-1], axis=1)], axis=1)
    return np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), group), axis=1)


def search_shard(index, rows: np.ndarray, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, global rows), both (Q, k'), of one shard, best first, equal scores by row; k' = min(k, shard size);
    -1 rows where FAISS found fewer."""
    k = min(k, index.ntotal)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if k == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    # FAISS breaks a tie across the k-th place by position, not row: fetch one more and, where a tie reaches it,
    # enough to hold the tie (up to TIE_FETCH more), so ties go by row as in merge_results.
    for fetch in (min(k + 1, index.ntotal), min(k + TIE_FETCH, index.ntotal)):
        scores, positions = index.search(q, fetch, params=params)
        if fetch == index.ntotal or not ((scores[:, -1] == scores[:, k - 1]) & (positions[:, -1] >= 0)).any():
            break
    found = positions >= 0
    global_rows = np.where(found, rows[np.clip(positions, 0, None)], -1)
    order = _ties_by_row(scores, global_rows)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(global_rows, order, 1)


def merge_results(parts: list[tuple[np.ndarray, np.ndarray]], k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The best k of several shards' (scores, rows): highest inner product or lowest L2, ties by row."""
    scores = np.concatenate([p[0] for p in parts], axis=1)
    rows = np.concatenate([p[1] for p in parts], axis=1)
    key = -scores if metric == "ip" else scores.copy()
    key[rows < 0] = np.inf  # missing results last
    order = np.lexsort((rows, key), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


