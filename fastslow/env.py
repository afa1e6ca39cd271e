"""Process environment that keeps a Ray this program starts on this machine on 127.0.0.1 and offline.

Ray probes cloud-metadata addresses at start-up and binds to the host's routable
address unless these are set before it starts; model hubs must not be reached.
Values already set by the user win. Applied only where a local Ray starts (cluster.connect.connect without an
address, the demo, the tests, the benchmarks), never on a cluster: there the dead proxy would keep botocore from
an instance profile's credentials (shared RAY_NOTES, "On a real cluster").

Ray 2.60 has no setting that turns the dashboard's cloud-metadata probe off: at every cluster start its usage-stats
module (dashboard/modules/usage_stats/usage_stats_head.py, `run`; the one module Ray still loads with
include_dashboard=False) calls ray._common.usage.usage_lib.get_cluster_config_to_report, whose
get_cloud_from_metadata_requests asks 169.254.169.254 and metadata.google.internal even with usage stats off.
Its only off-switch is the presence of ~/ray_bootstrap_config.yaml (which the cluster launcher writes on the heads
it starts), and a local run should not fake that file in a user's home; so the dead proxy below stays, for local
runs only.
"""

from __future__ import annotations

import os

LOCAL_SAFETY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "http_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost,::1",
    "NO_PROXY": "127.0.0.1,localhost,::1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Serve's low-overhead mode (user code on the replica's own event loop, gRPC between deployments,
    # no per-request logs to stderr) with direct ingress: the ingress replica also answers HTTP itself, on
    # a port of its own (30000+) bound to the app's host (127.0.0.1 here), where a load balancer in front
    # of the replicas sends traffic; the proxy on :8000 stays. Fast-only p50 over HTTP on 2 cores: 25 ms
    # through the proxy without it, 20 ms with it, 11 ms at the replica's port (benchmarks.serving). An
    # ingress replica that stops drains for this long first (Serve's default, 30 s, is for load balancers
    # to notice; a local app's redeploys and Ctrl-C should not wait that long). A driver that calls Serve
    # handles from synchronous code needs RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=1 beside these.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}


def apply_local_safety_env() -> None:
    """Set the loopback/offline settings (see shared RAY_NOTES) unless already set."""
    for key, value in LOCAL_SAFETY_ENV.items():
        os.environ.setdefault(key, value)
