"""`fastslow serve --address <dashboard URL>` as from a machine outside the cluster: run from a directory that is not
the repository, it submits the deploy as a Ray job with the project's tree, the app's replicas run that same
uploaded package, and the command returns with the endpoint (which answers searches) instead of waiting on its own
localhost. A deploy that fails ends the command in one line with the job's last log lines.

The tests that use `ray_head` are the integration tier, Serve shut down after each; the rest are fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluster.connect import free_port
from serve_app.launch import get_json

CLI_TIMEOUT_S = 240  # a deploy job is about 15 s of upload and start, plus the app's start (about 10 s here)


def serve_remote(ray_head, cwd, index_root: str, fast: str, slow: str, port: int) -> subprocess.CompletedProcess:
    # The cluster's Python is named: the test cluster's nodes have no `python` with Ray on their PATH.
    return subprocess.run([sys.executable, "-m", "fastslow", "serve", "--address", ray_head, "--index-root", index_root,
                           "--fast", fast, "--slow", slow, "--port", str(port), "--cluster-python", sys.executable,
                           "--no-progress"], cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def test_serve_through_the_dashboard_from_outside_the_repository(ray_head, serve_stack, no_serve, tmp_path):
    from serve_helpers import QUERIES, post

    port = free_port()
    done = serve_remote(ray_head, tmp_path, serve_stack["root"], serve_stack["fast"], serve_stack["slow"], port)
    assert done.returncode == 0, done.stderr[-3000:]
    endpoint = json.loads(done.stdout[done.stdout.index("{\n"):])
    url = f"http://127.0.0.1:{port}"
    assert endpoint["url"] == url and f"{url}/" in done.stdout  # the head's proxy (this machine here), printed
    with open(os.path.join(serve_stack["root"], "CURRENT")) as f:
        assert endpoint["index_version"] == f.read().strip()
    assert "--remote-port" in done.stdout  # loopback on the head: how to forward it is printed too

    status, answer = post(url, {"query": QUERIES[0], "k": 5})
    assert status == 200 and len(answer["results"]) == 5 and answer["reranked"], answer

    # The replicas run the job's uploaded package: the app's runtime_env names it, as Ray stored it.
    status, apps = get_json(f"{ray_head}/api/serve/applications/")
    runtime_env = apps["applications"]["fastslow"]["deployed_app_config"]["runtime_env"]
    assert runtime_env["working_dir"] == endpoint["code"] and endpoint["code"].startswith("gcs://_ray_pkg_")
    assert os.listdir(tmp_path) == []  # nothing written where the command ran


def test_a_failed_deploy_job_ends_in_one_line(ray_head, tiny_fast_checkpoint, no_serve, tmp_path):
    missing = str(tmp_path / "no-index")
    done = serve_remote(ray_head, tmp_path, missing, tiny_fast_checkpoint, "", free_port())
    assert done.returncode == 2, (done.stdout, done.stderr)
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("fastslow serve: error: deploy job fastslow-serve-") and "ended FAILED" in error
    # The job's own error line, why Serve gave the app up; not Ray's log lines around it.
    assert error.endswith(f"ended FAILED: Serve could not deploy the app: {missing}: no published index (CURRENT is "
                          "missing) (`ray job logs " + error.split("deploy job ")[1].split()[0] + f" --address {ray_head}`"
                          " shows its whole log)"), error
    assert "Traceback" not in done.stderr


# Fast tier: the pieces the command line puts together, without a cluster.


class _NoJob:
    def get_job_info(self, job):
        raise RuntimeError("gone")


def test_the_error_shows_the_jobs_own_line_or_its_last_lines_without_tracebacks():
    from serve_app.remote_deploy import JOB_ERROR, _last_lines

    logs = ("\x1b[1m\x1b[32mConnected to Ray cluster\x1b[39m\x1b[22m\nTraceback (most recent call last):\n"
            '  File "x.py", line 1\nValueError: bad\n')
    assert _last_lines(logs, _NoJob(), "j") == "Connected to Ray cluster | ValueError: bad"
    assert _last_lines(logs + f"{JOB_ERROR}the index root is empty\n", _NoJob(), "j") == "the index root is empty"
    assert _last_lines("", _NoJob(), "j") == "no log"


def test_only_a_dashboard_url_is_deployed_as_a_job(tmp_path):
    from serve_app.remote_deploy import is_dashboard_url, project_root

    assert is_dashboard_url("http://127.0.0.1:8265") and is_dashboard_url("https://head:443")
    assert not any(map(is_dashboard_url, ["127.0.0.1:6379", "auto", "ray://head:10001", "local", None]))
    assert os.path.isfile(os.path.join(project_root(), "pyproject.toml"))  # the tree the jobs are submitted with


def test_an_unreachable_dashboard_is_one_line(tmp_path):
    from fastslow.errors import FastslowError
    from serve_app.remote_deploy import deploy_as_job

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(FastslowError) as e:
        deploy_as_job(url, os.path.join(os.path.dirname(__file__), "..", "configs", "serve_synth.yaml"),
                      str(tmp_path / "index"), str(tmp_path / "fast"), "")
    assert str(e.value).startswith(f"{url}: no Ray dashboard answers there") and "\n" not in str(e.value)
    assert "ray dashboard ray_cluster.yaml" in str(e.value)


def test_a_fast_only_app_gets_no_reranker_options():
    """Without a Slow checkpoint the app builds no re-ranker: the config's SlowReranker options are left out (Serve
    refuses options for a deployment the app does not have), and kept with one."""
    from serve_app.launch import app_args, load_serve_config, with_settings
    from serve_app.remote_deploy import project_root

    config = load_serve_config(os.path.join(project_root(), "configs", "serve_synth.yaml"))
    names = lambda c: [d["name"] for d in c["applications"][0]["deployments"]]  # noqa: E731
    assert "SlowReranker" in names(config)
    assert "SlowReranker" not in names(with_settings(config, args=app_args("/i", "/f", None)))
    assert "SlowReranker" in names(with_settings(config, args=app_args("/i", "/f", "/s")))
