"""Joining the Ray cluster a job runs on, or starting a local one: the one place entry points call `ray.init`.

Address: `--address`, else RAY_ADDRESS (set by `ray job submit` for the job's driver), else a
local Ray started for this process. The loopback/offline settings are applied only before a local
Ray starts (its workers inherit them; a cluster's driver and workers keep the environment their
nodes were started with), and the S3 endpoint and offline settings of this process are passed to every worker.
"""

from __future__ import annotations

import json
import os

from fastslow.env import apply_local_safety_env
from fastslow.log import get_logger

log = get_logger(__name__)

LOCAL_OBJECT_STORE_BYTES = 500_000_000  # a local Ray on a small machine: keep the object store small


WORKER_ENV_KEYS = ("AWS_ENDPOINT_URL", "FASTSLOW_S3_ENDPOINT", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE",
                   "TRANSFORMERS_OFFLINE", "FASTSLOW_STORAGE_ROOT")
STORAGE_ROOT_ENV = "FASTSLOW_STORAGE_ROOT"


def storage_path(uri: str) -> str:
    """Where a path a job or the app is given lives: s3:// and absolute paths as they are; a relative path under
    FASTSLOW_STORAGE_ROOT where it is set (a cluster's shared root, e.g. s3://bucket/fastslow, which
    ray_cluster.yaml sets on every node), else under this process's working directory."""
    from fastslow import storage

    if storage.is_s3(uri) or os.path.isabs(uri):
        return uri
    root = os.environ.get(STORAGE_ROOT_ENV)
    return storage.join(root, uri) if root else os.path.abspath(uri)


def worker_env() -> dict[str, str]:
    """Settings of this process every Ray worker gets, except those a submitted job's runtime env already sets
    (Ray refuses a driver runtime env that repeats one)."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}") or "{}")
    taken = set(((job.get("runtime_env") or {}).get("env_vars") or {}))
    return {k: os.environ[k] for k in WORKER_ENV_KEYS if k in os.environ and k not in taken}


def connect(address: str | None = None, num_cpus: int | None = None, dashboard_port: int | None = None,
            log_to_driver: bool = True) -> str:
    """ray.init on the cluster at `address` (or RAY_ADDRESS), else a local Ray; returns which it was.

    `dashboard_port`: a local Ray also runs its dashboard there, on 127.0.0.1 (Serve deploys through it).
    `log_to_driver=False` keeps the workers' logs in their files (Serve replicas log every request).
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        # Only for a Ray started here: a cluster's driver, workers and replicas keep their own environment
        # (the dead proxy would block instance-profile credentials there; see RAY_NOTES, "On a real cluster").
        apply_local_safety_env()
    import ray

    if ray.is_initialized():
        return "already connected"
    runtime_env = {"env_vars": worker_env()}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=log_to_driver)
        log.info("joined the Ray cluster at %s", address)
        return address
    dashboard = {"include_dashboard": False}
    if dashboard_port:
        dashboard = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port}
    # "local": a new Ray for this process, even where `ray start` left a cluster ray.init would otherwise join.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE_BYTES,
             runtime_env=runtime_env, log_to_driver=log_to_driver, **dashboard)
    log.info("started a local Ray (%s CPUs)", num_cpus or os.cpu_count())
    return "local"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a local dashboard or Serve's HTTP proxy)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
