"""Serving benchmark: the Serve app on 127.0.0.1 under a bounded load, beside the same pipeline in one process.

    python -m benchmarks.serving --out out/serving.json      (also writes .md and .png beside it)

1. Models: the default Fast and Slow (configs/fast_synth_images.yaml, configs/slow_synth_images.yaml)
   trained for a short schedule on the quick synthetic images, or `--fast/--slow` checkpoints. Latency
   does not depend on how well they are trained.
2. Index: `--items` (100,000) vectors in `--shards` (2) shards, as two versions: `--factory` (IVF1024,Flat, searched
   with `--nprobe` 32; the one served) and an exact Flat one. The test split's items are embedded by
   Fast through the core's index build (`fastslow.index.build`: its partitions kept under the index
   root, so a rerun reuses them); the rest are copies of them with noise added to the vector (ids
   `item-NNNNNN`, the media of the item copied), so every result is a real, decodable item and the
   index has the size asked for.
   The IVF index's recall@10 against the exact one is measured on the queries.
3. Side by side, one client, Fast only, on each version (the app swaps to the Flat one live): the
   pipeline in this process (`fastslow.search.pipeline.SearchPipeline`, 1 torch and 1 FAISS thread, as each
   replica has) and the Serve app over HTTP, through Serve's proxy and straight to the ingress
   replica's own port (direct ingress: where a load balancer in front of the replicas sends traffic);
   the difference of the medians is the Serve graph's overhead. Also with the query encoder as its
   own deployment.
4. Latency p50/p99 and throughput, Fast only and re-ranking at K = 10, 20, 50, at several client
   concurrencies (closed loop: each client sends its next request when the last is answered).
5. Autoscaling: re-ranking at K=20 with the load stepped 1 -> 8 -> 0 clients; the re-ranker's running
   replicas (`serve.status()`) and the p99 latency every second, plotted.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.serving_load import (autoscaling_run, closed_loop, in_process, markdown, plot, recall_at_10,
                                     sequential, side_by_side, wait_for_replicas)
from fastslow.env import apply_local_safety_env
from fastslow.log import get_logger

log = get_logger("fastslow.benchmarks.serving")

QUERY_SPLIT = "test"
NOISE = 0.05  # std of the noise added to each copied vector, before it is normalised again


def train_models(work: Path, data: Path) -> tuple[str, str]:
    """The default Fast and Slow, briefly trained (reused when already in `work`)."""
    from fastslow.config import FastRunConfig, SlowRunConfig, load_config
    from fastslow.models.checkpoint import CONFIG_FILE
    from fastslow.train.run import run_training

    out = {}
    for kind, cls, epochs in (("fast", FastRunConfig, 2), ("slow", SlowRunConfig, 2)):
        ckpt = work / kind / "checkpoint"
        if not (ckpt / CONFIG_FILE).exists():
            cfg = load_config(cls, f"configs/{kind}_synth_images.yaml",
                              [f"data.path={data / 'images'}", f"out={work / kind}", f"train.epochs={epochs}"])
            run_training(kind, cfg)
        out[kind] = str(ckpt)
    return out["fast"], out["slow"]


def embed_queries_split(root: Path, fast_ckpt: str, data: Path):
    """The test split's items decoded, embedded and written by the core's index build, under `root`/builds (a
    rerun reuses the partitions written): (the build, ids, vectors, metadata, the captions of the indexed items)."""
    from fastslow.config import IndexRunConfig, load_config
    from fastslow.index.build import IndexBuild

    cfg = load_config(IndexRunConfig, None, [f"data.path={json.dumps(str(data / 'images'))}",
                                             f"checkpoint={json.dumps(fast_ckpt)}", f"root={json.dumps(str(root))}",
                                             f"split={QUERY_SPLIT}"])
    build = IndexBuild.prepare(cfg)
    for p in build.pending():
        build.run_partition(p)
    ids, vectors, metadata, errors, _ = build.collect()
    if errors:
        log.warning("%d items of the %s split not indexed, e.g. %s", len(errors), QUERY_SPLIT, errors[0])
    captions = {r["id"]: r["captions"] for r in build.rows}
    return build, ids, vectors, metadata, [c for i in ids for c in captions[i]]


def noisy_copies(vectors: np.ndarray, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors near the rows `source` of `vectors`: each plus NOISE Gaussian noise per dimension, normalised."""
    out = vectors[source] + NOISE * rng.standard_normal((len(source), vectors.shape[1]), dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def grow(ids: list[str], vectors: np.ndarray, metadata, items: int, seed: int = 0):
    """`items` rows: the real ones unchanged, then noisy copies of them (ids `item-NNNNNN`, the media of the item
    copied), every vector normalised: (ids, vectors, metadata)."""
    import pyarrow as pa

    n = len(vectors)
    rng = np.random.default_rng(seed)
    source = np.arange(items) % n
    out = noisy_copies(vectors, source, rng)
    real = vectors[: min(n, items)]
    out[: len(real)] = real / np.linalg.norm(real, axis=1, keepdims=True)  # the real items unchanged
    grown = [ids[i] if j < n else f"item-{j:06d}" for j, i in enumerate(source)]
    table = metadata.take(pa.array(source))
    return grown, out, table.set_column(table.schema.get_field_index("id"), "id", pa.array(grown, pa.string()))


def build_index(root: Path, fast_ckpt: str, data: Path, items: int, factory: str, shards: int,
                seed: int = 0) -> tuple[str, list[str]]:
    """A published version of `items` vectors in `shards` shards of `factory`; (version, the test captions)."""
    from fastslow.index.build import make_current, store_version
    from fastslow.index.shards import IndexSpec

    build, ids, vectors, metadata, texts = embed_queries_split(root, fast_ckpt, data)
    # One per model, size, factory and shard count: a rerun reuses it.
    version = f"bench-{items}-{factory.replace(',', '_')}-s{shards}-{build.model['weights_sha256'][:8]}"
    if not (root / "versions" / version / "manifest.json").exists():
        grown, grown_vectors, grown_metadata = grow(ids, vectors, metadata, items, seed)
        store_version(str(root), version, grown, grown_vectors, grown_metadata,
                      IndexSpec(factory=factory, shards=shards), build.identity())
    make_current(str(root), version)
    return version, texts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="result JSON (the .md and .png go beside it)")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--shards", type=int, default=2, help="shards of both versions (default %(default)s)")
    p.add_argument("--data", default="data/bench-quick-seed0", help="the quick synthetic benchmark (made if missing)")
    p.add_argument("--work", default="out/serving-work", help="models and index, reused by a rerun")
    p.add_argument("--fast", help="a Fast checkpoint (default: trained briefly into --work)")
    p.add_argument("--slow", help="a Slow checkpoint (default: trained briefly into --work)")
    p.add_argument("--factory", default="IVF1024,Flat", help="the served index (a Flat one is built beside it)")
    p.add_argument("--nprobe", type=int, default=32, help="0: the nprobe the build chose and recorded (the auto "
                                                          "factory's tuning)")
    p.add_argument("--seconds", type=float, default=8.0, help="per load point")
    p.add_argument("--clients", default="1,4,8")
    p.add_argument("--ks", default="10,20,50", help="re-ranking depths measured under load ('': Fast only)")
    p.add_argument("--sequential", type=int, default=200, help="requests per side-by-side measurement")
    p.add_argument("--step", default="1:10,8:45,0:35",
                   help="autoscaling load phases, CLIENTS:SECONDS,... ('': no autoscaling run)")
    return p.parse_args(argv)


def models_and_indexes(a: argparse.Namespace) -> dict:
    """The corpus, the two models and the two index versions (the served one published last: CURRENT)."""
    from benchmarks.table_runner import table_data
    from benchmarks.table_spec import table_spec

    work, data = Path(a.work).resolve(), Path(a.data).resolve()
    table_data(table_spec("quick"), "quick", 0, data)  # the table's quick dataset: one for every benchmark
    fast, slow = a.fast, a.slow
    if not (fast and slow):
        trained = train_models(work, data)
        fast, slow = fast or trained[0], slow or trained[1]
    fast, slow = os.path.abspath(fast), os.path.abspath(slow)
    root = work / "index"
    exact_version, queries = build_index(root, fast, data, a.items, "Flat", a.shards)
    version, _ = build_index(root, fast, data, a.items, a.factory, a.shards)  # published last: CURRENT
    # What the build chose for the served version (the auto factory's tuned nprobe; --nprobe 0 serves with it).
    search = json.loads((root / "versions" / version / "manifest.json").read_text()).get("search")
    return {"root": root, "fast": fast, "slow": slow, "version": version, "exact_version": exact_version,
            "queries": queries, "search": search}


def in_process_pipelines(run: dict, a: argparse.Namespace) -> tuple[dict, float]:
    """The in-process baseline of each version, with the threads one replica has, warmed up; the IVF recall."""
    import faiss
    import torch

    from fastslow.search.pipeline import SearchPipeline

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    pipelines = {v: SearchPipeline(str(run["root"]), run["fast"], run["slow"], version=v, nprobe=a.nprobe or None)
                 for v in (run["version"], run["exact_version"])}
    recall = recall_at_10(pipelines[run["version"]], pipelines[run["exact_version"]], run["queries"][: a.sequential])
    log.info("%s recall@10 against Flat: %s", a.factory, recall)
    for p in pipelines.values():
        in_process(p, run["queries"], 20)  # warm-up
    return pipelines, recall


class ServedApp:
    """The Serve app on a local Ray (its dashboard on 127.0.0.1), deployed with one index version or another."""

    def __init__(self, run: dict, nprobe: int):
        from cluster.connect import connect, free_port
        from serve_app.launch import base_url, load_serve_config

        dashboard = free_port()
        connect(num_cpus=os.cpu_count(), dashboard_port=dashboard, log_to_driver=False)
        self.template = load_serve_config("configs/serve_synth.yaml")
        self.args = {"index_root": str(run["root"]), "fast_checkpoint": run["fast"],
                     "slow_checkpoint": run["slow"], "nprobe": nprobe}
        self.port, self.dash = free_port(), f"http://127.0.0.1:{dashboard}"
        self.url = base_url(self.config(run["version"]))

    def config(self, index_version: str, **extra) -> dict:
        from serve_app.launch import with_settings

        return with_settings(self.template, args={**self.args, **extra}, port=self.port,
                             deployments={"Ingress": {"user_config": {"index_version": index_version}}})

    def deploy(self, index_version: str, **extra) -> None:
        from serve_app.launch import deploy, wait_ready

        deploy(self.config(index_version, **extra), self.dash)
        wait_ready(self.url, version=index_version)


def serve_side_by_side(app: ServedApp, run: dict, pipelines: dict, n: int) -> dict:
    """The encoder as its own deployment, then each version in process and over HTTP (a live swap between them)."""
    from ray import serve

    from serve_app.launch import APP_NAME, ingress_replica_urls

    queries, side = run["queries"], {}
    # The query encoder as its own deployment (one hop more), then the default: the encoder in the ingress.
    app.deploy(run["version"], encoder_in_ingress=False)
    sequential(app.url, queries, 20)
    side["encoder_deployment"] = sequential(app.url, queries, n)
    serve.delete(APP_NAME)  # a fresh app, not a rolling replacement of the graph under way
    for v in (run["version"], run["exact_version"]):
        app.deploy(v)  # the second time only the index version changes: a live swap
        urls = {"proxy": app.url, **{f"ingress replica {i}": u for i, u in enumerate(ingress_replica_urls())}}
        for u in urls.values():
            sequential(u, queries, 20)
        side[v] = side_by_side(pipelines[v], urls, queries, n)
        log.info("side by side, %s: %s", v, json.dumps(side[v]))
    return side


def load_points(url: str, queries: list[str], a: argparse.Namespace) -> list[dict]:
    """Fast only and re-ranking at each K, at each client concurrency."""
    load = []
    modes = [("fast", {"k": 10, "rerank": False})] + [
        (f"rerank@{k}", {"k": 10, "rerank": True, "rerank_k": k}) for k in map(int, filter(None, a.ks.split(",")))]
    for mode, body in modes:
        closed_loop(url, queries, body, 2, 3)  # warm the feature cache of the re-ranker
        for clients in map(int, a.clients.split(",")):
            r = {"mode": mode, **closed_loop(url, queries, body, clients, a.seconds)}
            log.info("%s", json.dumps(r))
            load.append(r)
    return load


def autoscaling_step(url: str, queries: list[str], step: str, png: str) -> dict:
    """The load step from one re-ranker replica and a quiet autoscaling window (Serve averages the load over the
    last 30 s by default: the load tests before would still count); plotted to `png`."""
    wait_for_replicas(1)
    time.sleep(30)
    phases = [(int(c), float(t)) for c, t in (x.split(":") for x in step.split(","))]
    auto = autoscaling_run(url, queries, phases)
    plot(auto, png)
    return auto


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    apply_local_safety_env()
    from fastslow.log import setup_logging

    setup_logging("INFO")
    from ray import serve

    started = time.time()
    run = models_and_indexes(a)
    pipelines, recall = in_process_pipelines(run, a)
    app = ServedApp(run, a.nprobe)
    side = serve_side_by_side(app, run, pipelines, a.sequential)
    del pipelines
    app.deploy(run["version"])
    load = load_points(app.url, run["queries"], a)
    png = str(Path(a.out).with_suffix(".png"))
    auto = autoscaling_step(app.url, run["queries"], a.step, png) if a.step else None
    serve.shutdown()
    result = {"items": a.items, "shards": a.shards, "version": run["version"], "factory": a.factory,
              "nprobe": a.nprobe or (run["search"] or {}).get("nprobe"),
              "build_search": run["search"], "ivf_recall_at_10": recall, "machine": f"{os.cpu_count()} CPUs",
              "fast": run["fast"], "slow": run["slow"], "side_by_side": side, "load": load, "autoscaling": auto,
              "plot": png if auto else None, "seconds": round(time.time() - started, 1)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    Path(a.out).with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
