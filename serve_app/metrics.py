"""The app's own metrics, exported through Ray's metrics agent (Prometheus text on each node's metrics port, with
the prefix `ray_` and Serve's deployment, replica and application tags):

    fastslow_requests_total{route, outcome}   /search answers: ok, degraded, partial; 4xx; 503; 5xx
    fastslow_stage_latency_ms{stage}           histogram of encode, retrieve, rerank, total (and explain) per answer
    fastslow_reranker_queue                    requests waiting for or being scored by a re-ranker replica

Replica counts and Serve's own queues are Serve's metrics (ray_serve_deployment_replica_healthy,
ray_serve_autoscaling_target_replicas, ray_serve_deployment_queued_queries; README "Metrics"). A 503 that Serve's
proxy answers itself (the ingress's queue full) never reaches the app: Serve counts it
(ray_serve_num_http_error_requests).
"""

from __future__ import annotations

STAGES = ("encode", "retrieve", "rerank", "total", "explain")
# Milliseconds: a shard search is around 1, an answer with re-ranking tens to hundreds, a timeout 5,000.
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


class _Lazy:
    """Metric objects made on first use, in the replica's process (Ray's metrics need a connected worker)."""

    def __init__(self):
        self._made: dict | None = None

    def _get(self) -> dict:
        if self._made is None:
            from ray.serve.metrics import Counter, Gauge, Histogram

            self._made = {
                "requests": Counter("fastslow_requests", description="/search answers by outcome (ok, degraded, "
                                    "partial, 4xx, 503, 5xx)", tag_keys=("outcome",)),
                "stages": Histogram("fastslow_stage_latency_ms", description="milliseconds per stage of a /search "
                                    "answer", boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("stage",)),
                "queue": Gauge("fastslow_reranker_queue", description="requests waiting for or being scored by "
                               "this re-ranker replica"),
            }
        return self._made

    def answered(self, answer: dict) -> None:
        """A /search answer (HTTP 200): its outcome and its stages' timings."""
        made = self._get()
        outcome = "partial" if answer.get("partial") else "degraded" if answer.get("degraded") else "ok"
        made["requests"].inc(tags={"outcome": outcome})
        for stage, ms in (answer.get("timings_ms") or {}).items():
            if stage in STAGES:
                made["stages"].observe(ms, tags={"stage": stage})

    def refused(self, status: int) -> None:
        """A /search request answered with an error status."""
        outcome = "4xx" if 400 <= status < 500 else "503" if status == 503 else "5xx"
        self._get()["requests"].inc(tags={"outcome": outcome})

    def queue(self, waiting: int) -> None:
        self._get()["queue"].set(waiting)


METRICS = _Lazy()


class CountRefusals:
    """ASGI middleware (outside the guard): counts /search requests answered with a status of 400 or more, the
    guard's 401 and 413 included; the route counts its own answers (METRICS.answered)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") != "/search":
            return await self.app(scope, receive, send)

        async def counted(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                METRICS.refused(message["status"])
            await send(message)

        return await self.app(scope, receive, counted)
