"""The app's metrics on Ray's metrics endpoint (Prometheus text), found the way Prometheus finds it: through the
service-discovery file Ray writes in its session folder. Requests move the counters and the latency histogram."""

import json
import os
import re
import time
import urllib.request

from serve_helpers import QUERIES, post


def _scrape(temp_dir: str) -> str:
    """Every target's /metrics of the cluster, concatenated."""
    with open(os.path.join(temp_dir, "session_latest", "prom_metrics_service_discovery.json")) as f:
        targets = [t for group in json.load(f) for t in group["targets"]]
    texts = []
    for target in targets:
        try:
            with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as r:
                texts.append(r.read().decode())
        except OSError:  # a target that is gone or not up yet
            pass
    return "\n".join(texts)


def _series(text: str, name: str, **labels) -> dict[str, float]:
    """The samples of `name` whose labels include `labels`: {its labels as written: value}, one per replica."""
    found = {}
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            found[m.group(1)] = float(m.group(2))
    return found


def _moved(before: dict[str, float], after: dict[str, float]) -> float:
    """How far a counter moved, series by series: a replica's series that appeared counts whole, and one that is
    gone (a replica of an earlier app, no longer reported) counts nothing."""
    return sum(max(0.0, v - before.get(k, 0.0)) for k, v in after.items())


def test_metrics_endpoint_shows_the_counters_moving(app, ray_head):
    def figures(text):
        return {"ok": _series(text, "ray_fastslow_requests_total", outcome="ok"),
                "4xx": _series(text, "ray_fastslow_requests_total", outcome="4xx"),
                "total": _series(text, "ray_fastslow_stage_latency_ms_count", stage="total"),
                "rerank": _series(text, "ray_fastslow_stage_latency_ms_count", stage="rerank"),
                "rerankers": _series(text, "ray_serve_deployment_replica_healthy", deployment="SlowReranker")}

    before = figures(_scrape(ray_head.temp_dir))
    for query in QUERIES:
        assert post(app["url"], {"query": query, "k": 5})[0] == 200
    assert post(app["url"], {"query": ""})[0] == 422
    assert post(app["url"], {"like": "no-such-item"})[0] == 404
    assert post(app["url"], {"query": "a", "filter": {"colour": {"eq": 1}}})[0] == 422
    deadline = time.time() + 120  # Ray's agents report every few seconds
    while True:
        text = _scrape(ray_head.temp_dir)
        after = figures(text)
        moved = {k: _moved(before[k], after[k]) for k in after}
        healthy = sum(after["rerankers"].values())
        done = moved["ok"] >= 3 and moved["4xx"] >= 3 and moved["total"] >= 3 and healthy >= 1
        if done or time.time() > deadline:
            break
        time.sleep(2)
    assert moved["ok"] >= 3 and moved["4xx"] >= 3 and moved["total"] >= 3 and moved["rerank"] >= 3, moved
    assert healthy >= 1, sorted({line.split("{")[0] for line in text.splitlines() if "serve_" in line})
    # The histogram's buckets, the re-ranker's queue gauge, and Serve's replica counts are exported too.
    assert re.search(r'ray_fastslow_stage_latency_ms_bucket\{[^}]*le="5000(\.0)?"', text)
    assert "ray_fastslow_reranker_queue{" in text
