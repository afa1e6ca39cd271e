"""`fastslow serve` and the demo's serving step: deploy the app from its Serve YAML on the connected Ray, wait
until it is ready, and (on a local Ray) serve until Ctrl-C, then shut Serve and Ray down.
"""

from __future__ import annotations

import signal
import threading

from fastslow.log import get_logger
from serve_app.deploy import base_url, deploy, load_serve_config, wait_ready, with_settings

log = get_logger("fastslow.serve")


def dashboard_address() -> str:
    """The dashboard of the Ray this process is connected to (Serve configs are deployed through it)."""
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()
    if not url:
        raise RuntimeError("the connected Ray runs no dashboard: start it with one (ray start --head includes it)")
    return url if url.startswith("http") else f"http://{url}"


def start_app(config_path: str, index_root: str, fast_checkpoint: str, slow_checkpoint: str | None,
              port: int | None = None, ready_timeout_s: float = 600.0, extra_args: dict | None = None) -> str:
    """Deploy the app of `config_path` with these models and index (what `serve deploy` does) and wait for /readyz.

    Returns the base URL. Ray must be connected (cluster.connect.connect).
    """
    args = {"index_root": index_root, "fast_checkpoint": fast_checkpoint, "slow_checkpoint": slow_checkpoint or "",
            **(extra_args or {})}
    from cluster.connect import worker_env

    # The S3 endpoint and offline settings reach the replicas too (credentials never: nodes have their own chain).
    config = with_settings(load_serve_config(config_path), args=args, port=port, env=worker_env())
    deploy(config, dashboard_address())
    url = base_url(config)
    wait_ready(url, timeout=ready_timeout_s)
    return url


def wait_until_interrupted() -> None:
    """Block until Ctrl-C or SIGTERM (both end the serving loop the same way)."""
    stop = threading.Event()
    # Handled explicitly: a process started in the background by a shell inherits SIGINT ignored.
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_serving() -> None:
    """Shut Serve down and disconnect from (or, for a local one, stop) Ray; a no-op when Ray is not up."""
    import ray

    if not ray.is_initialized():
        return
    try:
        from ray import serve

        serve.shutdown()
    except Exception as e:  # noqa: BLE001 - still stop Ray below; say why Serve did not stop cleanly
        log.warning("Serve did not shut down cleanly: %s", e)
    ray.shutdown()
