"""The serving benchmark's load and report: HTTP clients in closed loops, the in-process baseline, the side-by-side
measurement, the autoscaling step, its plot and the Markdown summary (`benchmarks.serving` runs them)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np


def _percentiles(lat_ms: list[float]) -> dict:
    a = np.asarray(lat_ms)
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "mean_ms": round(float(a.mean()), 2)}


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


def _sampler(record: list, state: dict, stop: threading.Event, samples: list) -> threading.Thread:
    """A thread appending, every second: running re-ranker replicas, clients, p99 of the last 2 s."""
    t_start = time.time()

    def sample() -> None:
        while not stop.is_set():
            now = time.time()
            recent = [ms for t, ms, _ in list(record) if now - 2.0 <= t <= now]
            samples.append({"t": round(now - t_start, 1), "replicas": reranker_replicas(), "clients": state["clients"],
                            "p99_ms": round(float(np.percentile(recent, 99)), 1) if recent else None})
            time.sleep(1.0)

    return threading.Thread(target=sample, daemon=True)


def autoscaling_run(url: str, queries: list[str], phases: list[tuple[int, float]]) -> dict:
    """Load phases of (clients, seconds); per second: running re-ranker replicas, clients, p99 of the last 2 s."""
    record, samples, stop, state = [], [], threading.Event(), {"clients": 0}
    sampler = _sampler(record, state, stop, samples)
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
    lines = [f"# Serving benchmark ({result['items']} items, {result['shards']} shards, {result['machine']})", "",
             "Side by side, one client, Fast only (k=10), p50 / p99 ms:", "",
             "| index | in process | path | Serve over HTTP | again in process | overhead at p50 | ingress: encode, "
             "retrieve |", "|---|---|---|---|---|---|---|"]
    for name, r in side.items():
        for path, overhead in (r.get("overhead_p50_ms") or {}).items() if isinstance(r, dict) else ():
            h = r[path]
            lines.append(f"| {name} | {r['in_process']['p50_ms']} / {r['in_process']['p99_ms']} | {path} | "
                         f"{h['p50_ms']} / {h['p99_ms']} | {r['in_process_again']['p50_ms']} | {overhead} | "
                         f"{h['ingress_p50_ms']['encode']}, {h['ingress_p50_ms']['retrieve']} |")
    built = result.get("build_search") or {}
    setting = f"nprobe {result['nprobe']}" if result["nprobe"] else ", ".join(
        f"{k} {built[k]} (recorded at build)" for k in ("nprobe", "ef_search") if k in built) or "as built"
    lines += ["", f"Recall@10 against the exact (Flat) index: {result['ivf_recall_at_10']} ({setting}). Query encoder as its own deployment (one hop more), {result['factory']}: "
              f"p50 {side['encoder_deployment']['p50_ms']} ms.", "", f"Load on the {result['factory']} index:", "",
              "| mode | clients | p50 ms | p99 ms | req/s | errors |", "|---|---|---|---|---|---|"]
    for r in result["load"]:
        lines.append(f"| {r['mode']} | {r['clients']} | {r['p50_ms']} | {r['p99_ms']} | {r['req_per_s']} | "
                     f"{r['errors']} |")
    auto = result["autoscaling"]
    if auto:
        lines += ["", f"Autoscaling: re-ranker replicas peaked at {auto['max_replicas']}, ended at "
                  f"{auto['final_replicas']}; {auto['requests']} requests, {auto['degraded']} degraded. "
                  f"Plot: {result['plot']}"]
    return "\n".join(lines) + "\n"
