"""`fastslow serve --address <dashboard URL>` as from a machine outside the cluster: run from a directory that is not
the repository, it submits the deploy as a Ray job with the project's tree, the app's replicas run that same
uploaded package, and the command returns with the endpoint (which answers searches) instead of waiting on its own
localhost (tests/test_pretrained_pipeline.py deploys so and queries the app). A deploy that fails ends the command
in one line with the job's last log lines.

The tests that use `ray_head` are the integration tier, Serve shut down after each; the rest are fast."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cluster.connect import free_port

CLI_TIMEOUT_S = 240  # a deploy job is about 15 s of upload and start, plus the app's start (about 10 s here)


def serve_remote(ray_head, cwd, index_root: str, fast: str, slow: str, port: int) -> subprocess.CompletedProcess:
    # The cluster's Python is named: the test cluster's nodes have no `python` with Ray on their PATH.
    return subprocess.run([sys.executable, "-m", "fastslow", "serve", "--address", ray_head, "--index-root", index_root,
                           "--fast", fast, "--slow", slow, "--port", str(port), "--cluster-python", sys.executable,
                           "--no-progress"], cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


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
