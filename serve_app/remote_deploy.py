"""`fastslow serve --address http://HEAD:8265`: the deploy as a Ray job, so it works from outside the cluster and
the app runs the same code as the jobs.

The caller (`deploy_as_job`) submits a job whose working_dir is this project's source tree, uploaded as every job's
(`ray job submit --working-dir .`). The job's driver (`python -m serve_app.remote_deploy REQUEST`, on the head)
deploys the app with that same uploaded package as the app's runtime_env working_dir, waits until the app answers
/readyz on the head's own Serve proxy, and prints where it listens. The caller waits on the job, never on its own
localhost, and returns that endpoint.

Why the working_dir is set explicitly: an app deployed declaratively (Serve config through the dashboard, as here
and as `serve deploy` does) runs in the config's runtime_env, not its deployer's; only `serve.run` from a driver
inherits the driver's (ray/serve/api.py: `default_runtime_env=ray.get_runtime_context().runtime_env`). The package
is content-addressed (gcs://_ray_pkg_<hash>.zip), so a tree unchanged since a job was submitted is the very package
that job ran, and Ray keeps it while a replica (a detached actor) uses it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
import uuid
from pathlib import Path

from fastslow.errors import FastslowError
from fastslow.log import get_logger
from serve_app.launch import READY_TIMEOUT_S, app_args, load_serve_config, wait_ready, with_settings

log = get_logger("fastslow.serve")

READY_MARK = "fastslow-serve-ready "  # the job's last line: this, then the endpoint as JSON
JOB_ERROR = "fastslow serve (deploy job): error: "  # the job's last line when it fails: this, then why
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours some of its log lines
JOB_SETUP_S = 300.0  # on top of the readiness timeout: the tree's upload and unpacking, the driver's start
PATH_ARGS = ("index_root", "fast_checkpoint", "slow_checkpoint")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def is_dashboard_url(address: str | None) -> bool:
    """Whether `--address` is a dashboard URL (what `ray job submit --address` takes), not a GCS or ray:// address."""
    return bool(address) and address.startswith(("http://", "https://"))


def project_root() -> str:
    """This project's source tree, the jobs' --working-dir: the folder holding pyproject.toml and serve_app/."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise FastslowError(f"fastslow serve --address URL ships fastslow's source tree as the app's code, and {root} "
                            "is not one (no pyproject.toml): install fastslow from its checkout, pip install -e .")
    return str(root)


# ---- the caller's side ----


def deploy_as_job(dashboard: str, config_path: str, index_root: str, fast: str, slow: str | None,
                  port: int | None = None, python: str = "python", ready_timeout_s: float = READY_TIMEOUT_S) -> dict:
    """Submit the deploy job to the cluster whose dashboard is `dashboard`, wait for it; the endpoint it reports.

    Paths are sent as given: the job resolves relative ones on the cluster (FASTSLOW_STORAGE_ROOT), as jobs do.
    """
    config = with_settings(load_serve_config(config_path), args=app_args(index_root, fast, slow), port=port)
    client = _client(dashboard)
    job = f"fastslow-serve-{uuid.uuid4().hex[:8]}"
    request = json.dumps({"config": config, "ready_timeout_s": ready_timeout_s}, separators=(",", ":"))
    code = project_root()
    try:
        client.submit_job(entrypoint=f"{shlex.quote(python)} -m serve_app.remote_deploy {shlex.quote(request)}",
                          submission_id=job, runtime_env={"working_dir": code})
    except Exception as e:  # noqa: BLE001 - the SDK raises bare RuntimeErrors: one line naming the address
        raise FastslowError(f"{dashboard}: the deploy job was not accepted ({_first_line(e)})") from None
    log.info("deploy job %s submitted to %s with the code of %s; waiting until the app answers", job, dashboard, code)
    try:
        status, logs = _wait(client, job, ready_timeout_s + JOB_SETUP_S)
    except KeyboardInterrupt:
        client.stop_job(job)
        raise
    if status != "SUCCEEDED":
        raise FastslowError(f"deploy job {job} on {dashboard} ended {status}: {_last_lines(logs, client, job)} "
                            f"(`ray job logs {job} --address {dashboard}` shows its whole log)")
    ready = [line for line in logs.splitlines() if line.startswith(READY_MARK)]
    if not ready:
        raise FastslowError(f"deploy job {job} on {dashboard} succeeded but reported no endpoint: "
                            f"{_last_lines(logs, client, job)}")
    return {**json.loads(ready[-1][len(READY_MARK):]), "job": job, "address": dashboard, "code_from": code}


def _client(dashboard: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(dashboard)
    except Exception as e:  # noqa: BLE001 - connection refused, not a dashboard, ...: one line naming the address
        raise FastslowError(f"{dashboard}: no Ray dashboard answers there ({_first_line(e)}); from outside the "
                            "cluster, forward it first: ray dashboard ray_cluster.yaml") from None


def _wait(client, job: str, timeout: float) -> tuple[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(client.get_job_status(job)).rpartition(".")[2]
        if status in TERMINAL:
            return status, client.get_job_logs(job)
        time.sleep(1.0)
    client.stop_job(job)
    return f"not done after {timeout:.0f} s (stopped)", client.get_job_logs(job)


def _last_lines(logs: str, client, job: str, n: int = 3) -> str:
    """The job's own one-line error where it printed one, else its last few log lines without tracebacks; else
    Ray's message about the job (a runtime env that failed to set up leaves no log)."""
    lines = [ANSI.sub("", line).strip() for line in logs.splitlines()
             if line.strip() and not line[:1].isspace() and not line.startswith("Traceback (")]
    own = [line for line in lines if line.startswith(JOB_ERROR)]
    if own:
        return own[-1][len(JOB_ERROR):]
    if lines:
        return " | ".join(lines[-n:])[-1000:]
    try:
        return _first_line(client.get_job_info(job).message or "no log")
    except Exception:  # noqa: BLE001 - the job record itself is gone
        return "no log"


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---- the job's side, on the cluster ----


def job_code() -> dict:
    """This job's code as a runtime_env: its working_dir (and py_modules), already uploaded (gcs:// URIs)."""
    import ray

    runtime_env = ray.get_runtime_context().runtime_env
    code = {k: runtime_env[k] for k in ("working_dir", "py_modules") if runtime_env.get(k)}
    if not code:
        raise FastslowError("this deploy job has no working_dir: submit it with one (fastslow serve --address URL "
                            "does), or the app would run whatever code the nodes have installed")
    return code


def deploy_here(config: dict, ready_timeout_s: float = READY_TIMEOUT_S) -> dict:
    """In the job: deploy `config` with this job's code, wait on the head's own proxy; the endpoint."""
    if not os.environ.get("RAY_ADDRESS"):
        raise FastslowError("serve_app.remote_deploy runs as a Ray job: fastslow serve --address http://HEAD:8265 "
                            "submits it")
    import ray

    from cluster.connect import connect, storage_path, worker_env
    from serve_app.launch import _app, dashboard_address, deploy, serving_address

    connect(None, log_to_driver=False)  # RAY_ADDRESS, set by the job
    args = _app(config).get("args") or {}
    paths = {k: storage_path(args[k]) for k in PATH_ARGS if args.get(k)}  # relative: on the cluster's storage root
    code = job_code()
    config = with_settings(config, args=paths, env=worker_env(), code=code)
    deploy(config, dashboard_address())
    host, port = serving_address()
    # A proxy bound to every interface is reached at this node's address (the driver and the HeadOnly proxy
    # are both on the head); one bound to an address, at that address.
    reach = ray.util.get_node_ip_address() if host in ("0.0.0.0", "::", "") else host
    url = f"http://{reach}:{port}"
    ready = wait_ready(url, timeout=ready_timeout_s, give_up=stop_if_deploy_failed)
    return {"url": url, "host": host, "port": port, "index_version": ready.get("index_version"),
            "code": code.get("working_dir") or code.get("py_modules")}


def stop_if_deploy_failed() -> None:
    """Raise as soon as Serve has given the app up (DEPLOY_FAILED: a bad index root, a checkpoint that does not
    load, ...), rather than waiting for the readiness timeout."""
    from ray import serve

    from serve_app.launch import APP_NAME

    app = serve.status().applications.get(APP_NAME)
    if app is not None and app.status == "DEPLOY_FAILED":
        # Serve's message ends with the exception that stopped the app (after its traceback).
        lines = [line.strip() for line in (app.message or "").splitlines() if line.strip()]
        reason = lines[-1].removeprefix("fastslow.errors.FastslowError: ") if lines else "no reason given"
        raise FastslowError(f"Serve could not deploy the app: {reason}")


def main(argv: list[str] | None = None) -> int:
    """The deploy job's driver: REQUEST is {"config": the Serve config, "ready_timeout_s": seconds}."""
    from fastslow.log import setup_logging

    setup_logging("INFO")
    argv = sys.argv[1:] if argv is None else argv
    try:
        request = json.loads(argv[0]) if len(argv) == 1 else None
        if not isinstance(request, dict) or "config" not in request:
            raise FastslowError("usage: python -m serve_app.remote_deploy '{\"config\": {...}}'")
        endpoint = deploy_here(request["config"], float(request.get("ready_timeout_s", READY_TIMEOUT_S)))
    except FastslowError as e:
        print(f"{JOB_ERROR}{e}", file=sys.stderr, flush=True)
        return 2
    except Exception as e:  # noqa: BLE001 - the traceback stays in the job's log; its last line says what failed
        log.exception("deploy failed")
        print(f"{JOB_ERROR}{type(e).__name__}: {_first_line(e)}", file=sys.stderr, flush=True)
        return 1
    print(f"index version {endpoint['index_version']} is served at {endpoint['url']} (Serve's proxy on the head, "
          f"listening on {endpoint['host']}:{endpoint['port']})", flush=True)
    print(READY_MARK + json.dumps(endpoint), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
