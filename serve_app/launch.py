"""Launching the app: deploy it from its Serve config YAML the way `serve deploy` does (through the dashboard's REST
API), wait until it answers, and (on a local Ray, for `fastslow serve` and the demo) serve until Ctrl-C, then shut
Serve and Ray down. Used by the command line, the demo, the tests and the serving benchmark; on a cluster reached
through its dashboard URL, by the deploy job (serve_app/remote_deploy.py).
"""

from __future__ import annotations

import copy
import json
import signal
import threading
import time
import urllib.error
import urllib.request

import yaml

from fastslow import storage
from fastslow.errors import FastslowError
from fastslow.log import get_logger
from serve_app.config import DEFAULT_PORT

APP_NAME = "fastslow"
log = get_logger("fastslow.serve")


def load_serve_config(path: str) -> dict:
    """A Serve config YAML (configs/serve_*.yaml) as a dict."""
    try:
        config = yaml.safe_load(storage.read_text(path))
    except yaml.YAMLError as e:
        raise FastslowError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict) or not config.get("applications"):
        raise FastslowError(f"{path}: not a Serve config (no `applications:` list)")
    return config


def with_settings(config: dict, args: dict | None = None, port: int | None = None,
                  deployments: dict[str, dict] | None = None, env: dict[str, str] | None = None,
                  code: dict | None = None) -> dict:
    """A copy of `config` with the app's `args` updated, the HTTP port set, per-deployment options merged in
    (by deployment name), environment variables for every replica, and `code` (runtime_env `working_dir` and/or
    `py_modules`) replacing the app's own."""
    config = copy.deepcopy(config)
    app = _app(config)
    app.setdefault("args", {}).update(args or {})
    if port is not None:
        config.setdefault("http_options", {})["port"] = int(port)
    entries = {d["name"]: d for d in app.setdefault("deployments", [])}
    for name, options in (deployments or {}).items():
        if name not in entries:
            entries[name] = {"name": name}
            app["deployments"].append(entries[name])
        entries[name].update(options)
    if not app["args"].get("slow_checkpoint"):
        # A Fast-only app builds no re-ranker, and Serve refuses options for a deployment the app does not have.
        app["deployments"] = [d for d in app["deployments"] if d["name"] != "SlowReranker"]
    if env:
        app.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env)
    if code:
        runtime_env = app.setdefault("runtime_env", {})
        for key in ("working_dir", "py_modules"):
            runtime_env.pop(key, None)
        runtime_env.update(code)
    return config


def _app(config: dict) -> dict:
    for app in config["applications"]:
        if app.get("name", APP_NAME) == APP_NAME:
            return app
    raise FastslowError(f"the Serve config has no application named {APP_NAME!r}")


def base_url(config: dict) -> str:
    http = config.get("http_options") or {}
    return f"http://{http.get('host', '127.0.0.1')}:{http.get('port', DEFAULT_PORT)}"


def deploy(config: dict, dashboard: str) -> None:
    """Send the config to the cluster whose dashboard is at `dashboard` (what `serve deploy` does)."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    ServeSubmissionClient(dashboard).deploy_applications(config)


def get_json(url: str, timeout: float = 10.0) -> tuple[int, dict]:
    """(status, JSON body) of a GET; (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}


def wait_ready(url: str, timeout: float = 300.0, version: str | None = None, give_up=None) -> dict:
    """Poll `<url>/readyz` until it is 200 (and serves `version`, if given); its body. `give_up()`, if given, is
    asked between polls and raises to stop waiting early (e.g. once Serve has given the app up)."""
    deadline, last = time.time() + timeout, {}
    while time.time() < deadline:
        status, last = get_json(url + "/readyz")
        if status == 200 and (version is None or last.get("index_version") == version):
            return last
        if give_up is not None:
            give_up()
        time.sleep(1.0)
    raise FastslowError(f"{url}: not ready after {timeout:.0f} s (last /readyz: {last or 'no answer'})")


def ingress_replica_urls(app_name: str = APP_NAME) -> list[str]:
    """The HTTP addresses of the app's ingress replicas themselves (Serve's direct ingress): what a load balancer
    in front of the replicas targets, one hop fewer than Serve's proxy. Empty without direct ingress."""
    import ray
    from ray.serve.context import _get_global_client

    # Serve has no public call for these yet; its controller keeps them as the app's "target groups".
    groups = ray.get(_get_global_client()._controller.get_target_groups.remote(app_name))
    return [f"http://{t.ip}:{t.port}" for g in groups if g.protocol.value == "HTTP" and g.app_name == app_name
            for t in g.targets if t.name.startswith("SERVE_REPLICA::")]


def dashboard_address() -> str:
    """The dashboard of the Ray this process is connected to (Serve configs are deployed through it)."""
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()
    if not url:
        raise RuntimeError("the connected Ray runs no dashboard: start it with one (ray start --head includes it)")
    return url if url.startswith("http") else f"http://{url}"


READY_TIMEOUT_S = 600.0


def app_args(index_root: str, fast_checkpoint: str, slow_checkpoint: str | None) -> dict:
    """The app's `args` naming its index and models."""
    return {"index_root": index_root, "fast_checkpoint": fast_checkpoint, "slow_checkpoint": slow_checkpoint or ""}


def start_app(config_path: str, index_root: str, fast_checkpoint: str, slow_checkpoint: str | None,
              port: int | None = None, ready_timeout_s: float = READY_TIMEOUT_S, extra_args: dict | None = None) -> str:
    """Deploy the app of `config_path` with these models and index (what `serve deploy` does) and wait for /readyz.

    Returns the base URL. Ray must be connected (cluster.connect.connect).
    """
    args = {**app_args(index_root, fast_checkpoint, slow_checkpoint), **(extra_args or {})}
    from cluster.connect import worker_env

    # The S3 endpoint and offline settings reach the replicas too (credentials never: nodes have their own chain).
    config = with_settings(load_serve_config(config_path), args=args, port=port, env=worker_env())
    deploy(config, dashboard_address())
    url = base_url(config)
    wait_ready(url, timeout=ready_timeout_s)
    return url


def serving_address() -> tuple[str, int]:
    """(host, port) Serve's HTTP proxy listens on, as the running Serve has them: a Serve already up keeps its
    HTTP options whatever a later config says (the dashboard only logs a warning)."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    return http.host, int(http.port)


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
