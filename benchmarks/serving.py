"""Serving benchmark: the Serve app on 127.0.0.1 under a bounded load, beside the same pipeline in one process.

    python -m benchmarks.serving --out out/serving.json      (also writes .md and .png beside it)

1. Models: the default Fast and Slow (configs/fast_synth_images.yaml, configs/slow_synth_images.yaml)
   trained for a short schedule on the quick synthetic images, or `--fast/--slow` checkpoints. Latency
   does not depend on how well they are trained.
2. Index: `--items` (100,000) vectors in 2 shards, as two versions: `--factory` (IVF1024,Flat, searched
   with `--nprobe` 32; the one served) and an exact Flat one. The test split's items are embedded by
   Fast; the rest are copies of them with noise added to the vector (ids `item-NNNNNN`, the media of
   the item copied), so every result is a real, decodable item and the index has the size asked for.
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
import threading
import time
from pathlib import Path

import numpy as np

from fastslow.env import apply_local_safety_env
from fastslow.log import get_logger

log = get_logger("fastslow.benchmarks.serving")

SHARDS = 2
QUERY_SPLIT = "test"
NOISE = 0.05  # std of the noise added to each copied vector, before it is normalised again


def _percentiles(lat_ms: list[float]) -> dict:
    a = np.asarray(lat_ms)
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "mean_ms": round(float(a.mean()), 2)}


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


def build_index(root: Path, fast_ckpt: str, data: Path, items: int, factory: str,
                seed: int = 0) -> tuple[str, list[str]]:
    """A published version of `items` vectors in SHARDS shards of `factory`; (version, the test captions)."""
    import pyarrow as pa

    from fastslow.data.source import DataConfig
    from fastslow.index.publish import current_version, publish, write_version
    from fastslow.index.shards import IndexSpec, build_shards
    from fastslow.models.checkpoint import read_manifest
    from fastslow.models.fast import FastModel
    from fastslow.data.source import load_data_split
    from fastslow.models.checkpoint import load_model
    from fastslow.inference.fast_embeddings import embed_split

    model = load_model(fast_ckpt, FastModel)
    split = load_data_split(DataConfig(path=str(data / "images")), QUERY_SPLIT, model.config.vision.image_size)
    emb = embed_split(model, split, progress=True)
    manifest = read_manifest(fast_ckpt)
    version = f"bench-{items}-{factory.replace(',', '_')}-{manifest['weights_sha256'][:8]}"  # one per model
    if (root / "versions" / version / "manifest.json").exists():
        publish(str(root), version)
        return current_version(str(root)), emb.texts
    base = emb.gallery.numpy().astype(np.float32)
    n = len(base)
    rng = np.random.default_rng(seed)
    source = np.arange(items) % n
    vectors = base[source] + NOISE * rng.standard_normal((items, base.shape[1]), dtype=np.float32)
    vectors[:n] = base  # the real items unchanged
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [split.ids[i] if j < n else f"item-{j:06d}" for j, i in enumerate(source)]
    metadata = pa.table({"id": ids, "uri": [split.uris[i] for i in source], "media": ["image"] * items,
                         "caption": [split.captions[i][0] for i in source]})
    spec = IndexSpec(factory=factory, shards=SHARDS)
    indexes, rows = build_shards(ids, vectors, spec)
    write_version(str(root), version, indexes, rows, metadata, spec,
                  {"checkpoint": fast_ckpt, "weights_sha256": manifest["weights_sha256"], "num_frames": 8})
    publish(str(root), version)
    return version, emb.texts


class Client:
    """POST /search over one kept-alive HTTP connection."""

    def __init__(self, url: str):
        import http.client
        from urllib.parse import urlparse

        u = urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)

    def search(self, body: dict) -> dict:
        self.conn.request("POST", "/search", json.dumps(body), {"content-type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
        return json.loads(data)


def closed_loop(url: str, queries: list[str], body: dict, clients: int, seconds: float,
                record: list | None = None) -> dict:
    """`clients` threads each sending requests back to back for `seconds`; latency and throughput."""
    lat, errors, stop = [], [], threading.Event()

    def run(c: int) -> None:
        client, i = Client(url), c
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                answer = client.search({**body, "query": queries[i % len(queries)]})
                ms = 1e3 * (time.perf_counter() - t0)
                lat.append(ms)
                if record is not None:
                    record.append((time.time(), ms, answer["degraded"]))
            except Exception as e:  # noqa: BLE001 - counted, the load goes on
                errors.append(str(e)[:200])
                client = Client(url)
            i += clients

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.perf_counter() - started
    return {**_percentiles(lat or [float("nan")]), "clients": clients, "req_per_s": round(len(lat) / elapsed, 1),
            "errors": len(errors), "first_error": errors[0] if errors else None}


def in_process(pipeline, queries: list[str], n: int) -> dict:
    from fastslow.search.pipeline import SearchRequest

    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        pipeline.search(SearchRequest(queries[i % len(queries)], k=10, rerank=False))
        lat.append(1e3 * (time.perf_counter() - t0))
    return _percentiles(lat)


def sequential(url: str, queries: list[str], n: int) -> dict:
    """One client, Fast only: latency at the client, and the median of the stages the ingress timed."""
    client, lat, stages = Client(url), [], []
    for i in range(n):
        t0 = time.perf_counter()
        answer = client.search({"query": queries[i % len(queries)], "k": 10, "rerank": False})
        lat.append(1e3 * (time.perf_counter() - t0))
        stages.append(answer["timings_ms"])
    return {**_percentiles(lat), "ingress_p50_ms": {k: round(float(np.median([t[k] for t in stages])), 2)
                                                    for k in ("encode", "retrieve", "total")}}


def recall_at_10(approx, exact, queries: list[str]) -> float:
    """Mean share of the exact top 10 that the approximate index also returns."""
    from fastslow.search.pipeline import SearchRequest

    hits = 0
    for q in queries:
        a = {h["id"] for h in approx.search(SearchRequest(q, k=10, rerank=False))["results"]}
        e = {h["id"] for h in exact.search(SearchRequest(q, k=10, rerank=False))["results"]}
        hits += len(a & e)
    return round(hits / (10 * len(queries)), 4)


def side_by_side(pipeline, urls: dict[str, str], queries: list[str], n: int) -> dict:
    """In-process, over HTTP at each of `urls` (name -> base URL), in-process again (a drift check); the overhead
    of each is its HTTP p50 minus the mean in-process p50."""
    out = {"in_process": in_process(pipeline, queries, n)}
    for name, url in urls.items():
        out[name] = sequential(url, queries, n)
    out["in_process_again"] = in_process(pipeline, queries, n)
    base = (out["in_process"]["p50_ms"] + out["in_process_again"]["p50_ms"]) / 2
    out["overhead_p50_ms"] = {name: round(out[name]["p50_ms"] - base, 2) for name in urls}
    return out


def wait_for_replicas(count: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and reranker_replicas() != count:
        time.sleep(1.0)


def reranker_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get("fastslow")
    if app is None or "SlowReranker" not in app.deployments:
        return 0
    return int(app.deployments["SlowReranker"].replica_states.get("RUNNING", 0))


def autoscaling_run(url: str, queries: list[str], phases: list[tuple[int, float]]) -> dict:
    """Load phases of (clients, seconds); per second: running re-ranker replicas, clients, p99 of the last 2 s."""
    record, samples, stop = [], [], threading.Event()
    t_start = time.time()
    state = {"clients": 0}

    def sample() -> None:
        while not stop.is_set():
            now = time.time()
            recent = [ms for t, ms, _ in list(record) if now - 2.0 <= t <= now]
            samples.append({"t": round(now - t_start, 1), "replicas": reranker_replicas(), "clients": state["clients"],
                            "p99_ms": round(float(np.percentile(recent, 99)), 1) if recent else None})
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results = []
    for clients, seconds in phases:
        state["clients"] = clients
        if clients:
            results.append(closed_loop(url, queries, {"k": 10, "rerank": True, "rerank_k": 20}, clients, seconds,
                                       record))
        else:
            time.sleep(seconds)
    stop.set()
    sampler.join(timeout=10)
    counts = [s["replicas"] for s in samples]
    peak_at = counts.index(max(counts)) if counts else 0
    return {"phases": [{"clients": c, "seconds": s} for c, s in phases], "load": results, "samples": samples,
            "max_replicas": max(counts, default=0), "final_replicas": counts[-1] if counts else 0,
            "back_to_one": any(c == 1 for c in counts[peak_at:]) and max(counts, default=0) > 1,
            "degraded": sum(1 for _, _, d in record if d), "requests": len(record)}


def plot(auto: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = auto["samples"]
    t = [x["t"] for x in s]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    a1.step(t, [x["replicas"] for x in s], where="post", label="re-ranker replicas (running)", color="tab:blue")
    a1.step(t, [x["clients"] for x in s], where="post", label="clients", color="tab:gray", linestyle=":")
    a1.set_ylabel("count")
    a1.legend(loc="upper right")
    a1.set_title("Re-ranker autoscaling under a load step (re-rank K=20)")
    a2.plot(t, [x["p99_ms"] if x["p99_ms"] is not None else np.nan for x in s], color="tab:red")
    a2.set_ylabel("p99 latency, last 2 s (ms)")
    a2.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    side = result["side_by_side"]
    lines = [f"# Serving benchmark ({result['items']} items, {SHARDS} shards, {result['machine']})", "",
             "Side by side, one client, Fast only (k=10), p50 / p99 ms:", "",
             "| index | in process | path | Serve over HTTP | again in process | overhead at p50 | ingress: encode, "
             "retrieve |", "|---|---|---|---|---|---|---|"]
    for name, r in side.items():
        for path, overhead in (r.get("overhead_p50_ms") or {}).items() if isinstance(r, dict) else ():
            h = r[path]
            lines.append(f"| {name} | {r['in_process']['p50_ms']} / {r['in_process']['p99_ms']} | {path} | "
                         f"{h['p50_ms']} / {h['p99_ms']} | {r['in_process_again']['p50_ms']} | {overhead} | "
                         f"{h['ingress_p50_ms']['encode']}, {h['ingress_p50_ms']['retrieve']} |")
    lines += ["", f"IVF recall@10 against the exact (Flat) index: {result['ivf_recall_at_10']} (nprobe "
              f"{result['nprobe']}). Query encoder as its own deployment (one hop more), {result['factory']}: "
              f"p50 {side['encoder_deployment']['p50_ms']} ms.", "", f"Load on the {result['factory']} index:", "",
              "| mode | clients | p50 ms | p99 ms | req/s | errors |", "|---|---|---|---|---|---|"]
    for r in result["load"]:
        lines.append(f"| {r['mode']} | {r['clients']} | {r['p50_ms']} | {r['p99_ms']} | {r['req_per_s']} | "
                     f"{r['errors']} |")
    auto = result["autoscaling"]
    lines += ["", f"Autoscaling: re-ranker replicas peaked at {auto['max_replicas']}, ended at "
              f"{auto['final_replicas']}; {auto['requests']} requests, {auto['degraded']} degraded. "
              f"Plot: {result['plot']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="result JSON (the .md and .png go beside it)")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--data", default="data/bench-quick-seed0", help="the quick synthetic benchmark (made if missing)")
    p.add_argument("--work", default="out/serving-work", help="models and index, reused by a rerun")
    p.add_argument("--fast", help="a Fast checkpoint (default: trained briefly into --work)")
    p.add_argument("--slow", help="a Slow checkpoint (default: trained briefly into --work)")
    p.add_argument("--factory", default="IVF1024,Flat", help="the served index (a Flat one is built beside it)")
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0, help="per load point")
    p.add_argument("--clients", default="1,4,8")
    p.add_argument("--ks", default="10,20,50")
    p.add_argument("--sequential", type=int, default=200, help="requests per side-by-side measurement")
    p.add_argument("--step", default="1:10,8:45,0:35", help="autoscaling load phases, CLIENTS:SECONDS,...")
    a = p.parse_args(argv)
    apply_local_safety_env()
    from fastslow.log import setup_logging

    setup_logging("INFO")
    import faiss
    import torch

    from cluster.connect import connect, free_port
    from fastslow.search.pipeline import SearchPipeline
    from fastslow.synth import ensure_synth
    from ray import serve

    from serve_app.deploy import (APP_NAME, base_url, deploy, ingress_replica_urls, load_serve_config, wait_ready,
                                  with_settings)

    started = time.time()
    work, data = Path(a.work).resolve(), Path(a.data).resolve()
    ensure_synth(data, seed=0, size="quick")
    fast, slow = a.fast, a.slow
    if not (fast and slow):
        trained = train_models(work, data)
        fast, slow = fast or trained[0], slow or trained[1]
    fast, slow = os.path.abspath(fast), os.path.abspath(slow)
    root = work / "index"
    exact_version, queries = build_index(root, fast, data, a.items, "Flat")
    version, _ = build_index(root, fast, data, a.items, a.factory)  # published last: CURRENT

    # The in-process baseline, with the threads one replica has.
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    pipelines = {v: SearchPipeline(str(root), fast, slow, version=v, nprobe=a.nprobe)
                 for v in (version, exact_version)}
    recall = recall_at_10(pipelines[version], pipelines[exact_version], queries[: a.sequential])
    log.info("%s recall@10 against Flat: %s", a.factory, recall)
    for p in pipelines.values():
        in_process(p, queries, 20)  # warm-up

    dashboard = free_port()
    connect(num_cpus=os.cpu_count(), dashboard_port=dashboard, log_to_driver=False)
    template = load_serve_config("configs/serve_synth.yaml")
    args = {"index_root": str(root), "fast_checkpoint": fast, "slow_checkpoint": slow, "nprobe": a.nprobe}

    def app_config(index_version: str, **extra) -> dict:
        return with_settings(template, args={**args, **extra}, port=port,
                             deployments={"Ingress": {"user_config": {"index_version": index_version}}})

    port, dash = free_port(), f"http://127.0.0.1:{dashboard}"
    url = base_url(app_config(version))
    side = {}
    # The query encoder as its own deployment (one hop more), then the default: the encoder in the ingress.
    deploy(app_config(version, encoder_in_ingress=False), dash)
    wait_ready(url, version=version)
    sequential(url, queries, 20)
    side["encoder_deployment"] = sequential(url, queries, a.sequential)
    serve.delete(APP_NAME)  # a fresh app, not a rolling replacement of the graph under way
    for v in (version, exact_version):
        deploy(app_config(v), dash)  # the second time only the index version changes: a live swap
        wait_ready(url, version=v)
        urls = {"proxy": url, **{f"ingress replica {i}": u for i, u in enumerate(ingress_replica_urls())}}
        for u in urls.values():
            sequential(u, queries, 20)
        side[v] = side_by_side(pipelines[v], urls, queries, a.sequential)
        log.info("side by side, %s: %s", v, json.dumps(side[v]))
    del pipelines
    deploy(app_config(version), dash)
    wait_ready(url, version=version)

    load = []
    modes = [("fast", {"k": 10, "rerank": False})] + [
        (f"rerank@{k}", {"k": 10, "rerank": True, "rerank_k": k}) for k in map(int, a.ks.split(","))]
    for mode, body in modes:
        closed_loop(url, queries, body, 2, 3)  # warm the feature cache of the re-ranker
        for clients in map(int, a.clients.split(",")):
            r = {"mode": mode, **closed_loop(url, queries, body, clients, a.seconds)}
            log.info("%s", json.dumps(r))
            load.append(r)

    # The step starts from one re-ranker replica and a quiet autoscaling window (Serve averages the
    # load over the last 30 s by default: the load tests above would still count).
    wait_for_replicas(1)
    time.sleep(30)
    phases = [(int(c), float(t)) for c, t in (x.split(":") for x in a.step.split(","))]
    auto = autoscaling_run(url, queries, phases)
    png = str(Path(a.out).with_suffix(".png"))
    plot(auto, png)

    serve.shutdown()
    result = {"items": a.items, "shards": SHARDS, "version": version, "factory": a.factory, "nprobe": a.nprobe,
              "ivf_recall_at_10": recall, "machine": f"{os.cpu_count()} CPUs",
              "fast": fast, "slow": slow, "side_by_side": side, "load": load, "autoscaling": auto, "plot": png,
              "seconds": round(time.time() - started, 1)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    Path(a.out).with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
