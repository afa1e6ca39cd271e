"""A million items built and searched: build time, bytes per shard, recall@10, latency and peak memory.

    python -m benchmarks.million --out out/million.json          (+ .md and .png beside it)
    python -m benchmarks.million --out /tmp/m.json --quick       (20,000 items: a smoke run)

1. Vectors: `--real` (2,000) of benchmarks.indexing's generated photos embedded by the default Fast config
   (random heads) through the index job's own embedder; the rest, up to `--items`, generated: a real vector plus
   Gaussian noise (benchmarks.serving's NOISE per dimension), normalised. So the dimension (256) and the norm (1)
   are the real ones, and neighbourhoods are clusters around real items rather than isotropic noise (on which
   an IVF index must probe every list).
2. The partitions are written once as the index job writes them (`write_partition`, `--partition-size` items
   each, every item's media a real photo). Each factory (`--factories`) in each shard count (`--shards`) is then
   a version assembled by the build's own path (`scan` + `assemble`, one Ray task per shard on a local Ray of
   this machine's CPUs, the search setting for recall@10 0.95 chosen at build and recorded), each in a fresh
   process, whose peak resident memory is the driver's.
3. Per version, in a fresh process that loads the shards as Serve's retriever replicas do (`ShardSearcher`, one
   FAISS thread): the peak memory of one shard's replica (shard 0, loaded alone first), then for `--queries`
   held-out vectors (noisy copies of real ones, not in the index) at batch 1 the latency of each shard's search,
   reported as the shards searched in parallel (the slowest shard: one replica each, as served) and one after
   another (one core doing all), p50 and p99, and their recall@10 against exact search over every vector.
Not measured here: latency over HTTP through Serve (benchmarks.serving does that at 100,000 items).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import time
from pathlib import Path

import numpy as np

from benchmarks.gpu_timing import sig
from benchmarks.report import pyplot, write_report
from fastslow.env import apply_local_safety_env
from fastslow.log import get_logger

log = get_logger("fastslow.benchmarks.million")
TOP = 10
FACTORIES = "Flat,auto,IVF4096_PQ64,HNSW32"  # `_` for `,` inside one factory (the list is comma-separated)


def peak_mb() -> float:
    """This process's peak resident memory so far, MB: VmHWM, which starts afresh in a spawned process (ru_maxrss
    keeps the parent's peak across the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: an upper bound


def real_vectors(work: Path, data: Path, n: int) -> tuple[np.ndarray, list[str]]:
    """`n` real embeddings (and their photos' paths) of benchmarks.indexing's photos, made once into `work`."""
    from benchmarks.indexing import fast_checkpoint, write_images

    cache = work / f"real-{n}.npy"
    paths = write_images(data / "images", n)
    if not cache.exists():
        from fastslow.data.decode import DecodeConfig
        from fastslow.index.partition import PartitionEmbedder, decode_partition
        from fastslow.models.checkpoint import read_manifest

        checkpoint = fast_checkpoint(work)
        cfg = DecodeConfig.for_model(read_manifest(checkpoint)["config"]["vision"])
        embedder, out = PartitionEmbedder(checkpoint), []
        for start in range(0, n, 256):
            items = [{"id": Path(p).stem, "media": "image", "uri": p} for p in paths[start : start + 256]]
            out.append(embedder.embed(decode_partition(0, items, cfg).pixels))
        np.save(cache, np.concatenate(out))
    return np.load(cache), paths


def partition_vectors(real: np.ndarray, p: int, size: int, items: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partition `p`'s (global rows, the real row each copies, vectors): the real vectors first, then noisy copies
    of random real ones (deterministic per p)."""
    from benchmarks.serving import noisy_copies

    rows = np.arange(p * size, min(items, (p + 1) * size))
    rng = np.random.default_rng([seed, p])
    source = np.where(rows < len(real), rows, rng.integers(0, len(real), len(rows)))
    vectors = noisy_copies(real, source, rng)
    is_real = rows < len(real)
    vectors[is_real] = real[rows[is_real]]
    return rows, source, vectors


def write_partitions(build_dir: Path, real: np.ndarray, paths: list[str], items: int, size: int,
                     seed: int) -> int:
    """The build's partitions, as the index job writes them (skipped where written); how many."""
    from fastslow.index.partition import is_written, write_partition

    count = -(-items // size)
    for p in range(count):
        if is_written(str(build_dir), p):
            continue
        rows, source, vectors = partition_vectors(real, p, size, items, seed)
        # Each item's media: the real photo its vector copies.
        batch = [{"id": f"item-{r:07d}", "uri": paths[s], "media": "image", "captions": [], "width": 500,
                  "height": 375} for r, s in zip(rows, source)]
        write_partition(str(build_dir), p, batch, [], vectors)
    return count


def exact_top(build_dir: Path, count: int, queries: np.ndarray) -> np.ndarray:
    """Ids (as global rows) of each query's exact top-10 over every vector, streamed partition by partition."""
    from fastslow.index.assemble import vectors_of
    from fastslow.index.partition import read_partition

    best_s = np.full((len(queries), TOP), -np.inf, np.float32)
    best_r = np.full((len(queries), TOP), -1, np.int64)
    for p in range(count):
        table, _ = read_partition(str(build_dir), p, columns=["id", "embedding"])
        rows = np.array([int(i.split("-")[1]) for i in table.column("id").to_pylist()])
        scores = queries @ vectors_of(table).T
        s = np.concatenate([best_s, scores], axis=1)
        r = np.concatenate([best_r, np.broadcast_to(rows, scores.shape)], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :TOP]
        best_s, best_r = np.take_along_axis(s, top, 1), np.take_along_axis(r, top, 1)
    return best_r


def build_version(args: dict, out: multiprocessing.Queue) -> None:
    """In a fresh process: assemble one version from the written partitions on a local Ray; its figures."""
    from cluster.connect import connect
    from fastslow.index.assemble import assemble, scan
    from fastslow.index.shards import IndexSpec
    from jobs.index_job import _shard_tasks

    connect(num_cpus=args["cpus"], log_to_driver=False)
    started = time.perf_counter()
    layout = scan(args["build_dir"], [[]] * args["partitions"])
    spec = IndexSpec(factory=args["factory"], shards=args["shards"])
    manifest = assemble(args["build_dir"], layout, args["root"], args["version"], spec,
                        {"checkpoint": "benchmarks.million", "weights_sha256": "0" * 64, "config": {},
                         "num_frames": 8, "collection_root": args["collection_root"]}, args["collection_root"],
                        run=_shard_tasks)
    out.put({"build_seconds": time.perf_counter() - started, "driver_peak_mb": peak_mb(),
             "factory": manifest["factory"], "search": manifest.get("search", {})})


def search_version(args: dict, out: multiprocessing.Queue) -> None:
    """In a fresh process: shard 0 loaded alone (a replica's peak memory), then every shard; latency and recall."""
    import faiss

    from fastslow.search.answer import merge_hits
    from fastslow.search.shard import ShardSearcher

    faiss.omp_set_num_threads(1)
    root, version, shards = args["root"], args["version"], args["shards"]
    searchers = [ShardSearcher(root, 0, version=version)]
    replica_mb = peak_mb()
    searchers += [ShardSearcher(root, s, version=version) for s in range(1, shards)]
    queries, exact = args["queries"], args["exact"]
    for q in queries[:20]:  # warm-up
        for s in searchers:
            s.search(q[None], TOP)
    per_shard = np.zeros((len(queries), shards))
    found = []
    for i, q in enumerate(queries):
        parts = []
        for j, s in enumerate(searchers):
            t0 = time.perf_counter()
            parts.append(s.search(q[None], TOP)[0])
            per_shard[i, j] = time.perf_counter() - t0
        best = merge_hits(parts, TOP, searchers[0].metric)  # as the app merges its shards' answers
        found.append(len({int(h["id"].split("-")[1]) for h in best} & set(exact[i].tolist())) / TOP)
    parallel, serial = per_shard.max(axis=1) * 1e3, per_shard.sum(axis=1) * 1e3
    out.put({"replica_peak_mb": replica_mb, "all_shards_peak_mb": peak_mb(), "recall_at_10": float(np.mean(found)),
             "p50_ms_parallel": float(np.percentile(parallel, 50)), "p99_ms_parallel": float(np.percentile(parallel, 99)),
             "p50_ms_serial": float(np.percentile(serial, 50)), "p99_ms_serial": float(np.percentile(serial, 99))})


def in_fresh_process(fn, args: dict) -> dict:
    """`fn(args, queue)` in a spawned process; what it puts on the queue. A child that dies first is an error
    naming its exit code, not a wait for ever."""
    import queue as queues

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=fn, args=(args, out))
    proc.start()
    while True:  # read before join: a large result must be read for the child to finish
        try:
            result = out.get(timeout=5)
            break
        except queues.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"{fn.__name__} ended with exit code {proc.exitcode} and no result") from None
    proc.join()
    return result


def shard_bytes(root: Path, version: str) -> list[int]:
    """Bytes of each shard's files (index, rows, metadata) in the version folder."""
    manifest = json.loads((root / "versions" / version / "manifest.json").read_text())
    folder = root / "versions" / version
    return [sum((folder / f).stat().st_size for f in {v for k, v in entry.items() if k.endswith("file")})
            for entry in manifest["shards"]]


def measure(a: argparse.Namespace, factory: str, shards: int, build: dict, queries: np.ndarray,
            exact: np.ndarray) -> dict:
    """One version's row (built unless a rerun finds it with its figures)."""
    root, name = Path(build["root"]), f"m{a.items}-{factory.replace(',', '_')}-s{shards}"
    figures = Path(a.work) / "figures" / f"{name}.json"
    if not figures.exists() or not (root / "versions" / name / "manifest.json").exists():
        log.info("building %s", name)
        built = in_fresh_process(build_version, {**build, "factory": factory, "shards": shards, "version": name})
        figures.parent.mkdir(parents=True, exist_ok=True)
        figures.write_text(json.dumps(built))
    built = json.loads(figures.read_text())
    searched = in_fresh_process(search_version, {"root": str(root), "version": name, "shards": shards,
                                                 "queries": queries, "exact": exact})
    sizes = shard_bytes(root, name)
    row = {"factory": factory, "resolved": built["factory"], "shards": shards, "items": a.items,
           "build_seconds": sig(built["build_seconds"]), "driver_peak_mb": sig(built["driver_peak_mb"]),
           "bytes_per_shard": int(np.mean(sizes)), "search": built["search"],
           "recall_at_10": sig(searched["recall_at_10"]), "replica_peak_mb": sig(searched["replica_peak_mb"]),
           **{k: sig(v) for k, v in searched.items() if k.startswith("p")}}
    log.info("%s", json.dumps(row))
    return row


def markdown(result: dict) -> str:
    lines = [f"{result['items']:,} items ({result['real']:,} real embeddings, the rest generated around them), "
             f"dimension {result['dim']}, built on {result['cpus']} cores; latency of one query at batch 1 with one "
             f"FAISS thread per shard ({result['queries']} held-out queries), in process (no HTTP).", "",
             "| factory | shards | build (s) | MB per shard | search setting (recall@10 at build) | recall@10 "
             "| p50 / p99 ms, shards in parallel | p50 / p99 ms, one core | driver peak MB | replica peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        s = r["search"]
        setting = ", ".join(f"{k} {v}" for k, v in s.items() if k in ("nprobe", "ef_search")) or "exact"
        if "recall_at_10" in s:
            setting += f" ({s['recall_at_10']})"
        lines.append(f"| {r['resolved']} | {r['shards']} | {r['build_seconds']} | {r['bytes_per_shard'] / 1e6:.1f} | "
                     f"{setting} | {r['recall_at_10']} | {r['p50_ms_parallel']} / {r['p99_ms_parallel']} | "
                     f"{r['p50_ms_serial']} / {r['p99_ms_serial']} | {r['driver_peak_mb']} | {r['replica_peak_mb']} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, png: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for r in result["rows"]:
        ax.scatter(r["p50_ms_parallel"], r["recall_at_10"], s=30 + 20 * r["shards"], label=f"{r['resolved']}, "
                   f"{r['shards']} shard{'s' if r['shards'] > 1 else ''}")
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("p50 ms per query (batch 1, shards in parallel)")
    ax.set_ylabel("recall@10")
    ax.set_title(f"{result['items']:,} items: recall against latency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.million", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="result JSON (the .md and .png go beside it)")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--real", type=int, default=2000, help="items with real embeddings")
    p.add_argument("--factories", default=FACTORIES, help=f"comma-separated; `_` for a factory's own commas")
    p.add_argument("--shards", default="1,4")
    p.add_argument("--queries", type=int, default=300, help="held-out queries for latency and recall")
    p.add_argument("--partition-size", type=int, default=10_000)
    p.add_argument("--data", default="data/bench-indexing", help="benchmarks.indexing's photos (made if missing)")
    p.add_argument("--work", default="out/million-work", help="partitions, versions and figures, reused by a rerun")
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="20,000 items (200 real), Flat and HNSW32 in 2 shards")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    apply_local_safety_env()
    a = parse_args(argv)
    from fastslow.log import setup_logging

    setup_logging("INFO")
    if a.quick:
        a.items, a.real, a.factories, a.shards, a.queries, a.partition_size = 20_000, 200, "Flat,HNSW32", "2", 50, 2000
    work = Path(a.work).resolve() / f"items-{a.items}-seed{a.seed}"
    a.work = str(work)
    work.mkdir(parents=True, exist_ok=True)
    real, paths = real_vectors(Path(a.work), Path(a.data).resolve(), a.real)
    build_dir = work / "builds" / "generated"
    started = time.perf_counter()
    partitions = write_partitions(build_dir, real, paths, a.items, a.partition_size, a.seed)
    log.info("%d items in %d partitions (%.0f s)", a.items, partitions, time.perf_counter() - started)
    from benchmarks.serving import noisy_copies

    rng = np.random.default_rng([a.seed, 1 << 20])  # queries: noisy copies the index does not hold
    queries = noisy_copies(real, rng.integers(0, len(real), a.queries), rng)
    exact = exact_top(build_dir, partitions, queries)
    build = {"build_dir": str(build_dir), "partitions": partitions, "root": str(work / "index"), "cpus": a.cpus,
             "collection_root": str(Path(paths[0]).parent)}
    rows = [measure(a, factory.replace("_", ","), int(shards), build, queries, exact)
            for factory in a.factories.split(",") for shards in a.shards.split(",")]
    result = {"items": a.items, "real": a.real, "dim": int(real.shape[1]), "cpus": a.cpus, "queries": a.queries,
              "rows": rows}
    write_report(a.out, result, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
