"""`fastslow demo` at the tiny size through the real CLI, and the commands users run around it: search from the
terminal, eval and index on a Ray cluster with --address, --help of every command."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from cluster.connect import free_port
from serve_app.launch import get_json

# Every test runs the `fastslow` command (the demo, its help) in a process of its own: the integration tier.
pytestmark = pytest.mark.integration

SETUP_TIMEOUT_S = 900
TABLE_ROW = re.compile(r"^(Fast.*?)\s+(\d+\.\d)\s+(\d+\.\d)\s+(\d+\.\d)\s+(\d+\.\d+)$")


def fastslow(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastslow", *args], capture_output=True, text=True, timeout=timeout)


class Running:
    """A command whose output lines are collected as they come, so a test can wait for one."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "fastslow", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.5)
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines[-60:]))

    def stop(self, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        finally:
            self.reader.join(10)


def table(lines: list[str]) -> dict[str, tuple[float, ...]]:
    """The printed evaluation table: method -> (R@1, R@5, R@10, ms/query)."""
    return {m.group(1): tuple(float(m.group(i)) for i in range(2, 6)) for m in map(TABLE_ROW.match, lines) if m}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def demo(workdir):
    """The demo, serving, with its URL; interrupted at the end of the module if a test has not done it."""
    running = Running(["demo", "--size", "tiny", "--workdir", str(workdir), "--port", str(free_port()),
                       "--no-progress"])
    try:
        running.url = running.wait_for(r"Search page: (http://127\.0\.0\.1:\d+)/", SETUP_TIMEOUT_S).group(1)
        yield running
    finally:
        running.stop()


def test_demo_sets_up_prints_the_table_and_serves(demo):
    for step in range(1, 8):
        assert any(line.startswith(f"[{step}/7]") for line in demo.lines), f"step {step} not reported"
    rows = table(demo.lines)
    assert set(rows) == {"Fast", "Fast distilled from Slow", "Fast top 5, re-ranked by Slow"}, demo.lines[-30:]
    for r1, r5, r10, ms in rows.values():
        assert 0 <= r1 <= r5 <= r10 <= 100 and ms > 0
    # Slow re-orders Fast's top 5 only: the same items are in the top 5 and the top 10, so R@5 and R@10 hold.
    assert rows["Fast top 5, re-ranked by Slow"][1:3] == rows["Fast"][1:3], rows
    status, ready = get_json(demo.url + "/readyz")
    assert status == 200 and ready["ready"], ready


def test_search_command_queries_the_demo(demo):
    answer = json.loads(fastslow("search", "a small red cube", "--url", demo.url, "-k", "3", "--rerank-k", "5",
                                 "--json").stdout)
    assert len(answer["results"]) == 3 and answer["reranked"] and not answer["degraded"]
    assert all(hit["slow_score"] is not None for hit in answer["results"])
    fast_only = json.loads(fastslow("search", "a small red cube", "--url", demo.url, "-k", "3", "--no-rerank",
                                    "--json").stdout)
    assert not fast_only["reranked"] and all(h["slow_score"] is None for h in fast_only["results"])
    printed = fastslow("search", "a small red cube", "--url", demo.url, "-k", "3", "--rerank-k", "5")
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert len(lines) == 5 and "re-ranked by Slow" in lines[-1] and "total" in lines[-1]
    assert [line.split()[3] for line in lines[1:4]] == [h["id"] for h in answer["results"]]


def test_search_command_says_what_is_wrong(demo):
    empty = fastslow("search", "   ", "--url", demo.url)
    assert empty.returncode == 2 and "422 query: is empty" in empty.stderr, empty.stderr
    nothing = fastslow("search", "a cube", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "5")
    assert nothing.returncode == 2 and "no answer" in nothing.stderr and "Traceback" not in nothing.stderr


def test_ctrl_c_shuts_serve_and_ray_down(demo):
    assert demo.stop() == 0, "\n".join(demo.lines[-30:])
    assert "Serve and Ray are shut down." in demo.lines
    assert get_json(demo.url + "/healthz", timeout=5)[0] == 0, "still answering after Ctrl-C"


def test_rerun_reuses_what_was_built(demo, workdir):
    first = table(demo.lines)
    again = fastslow("demo", "--size", "tiny", "--workdir", str(workdir), "--port", str(free_port()),
                     "--exit-when-ready", "--no-progress", timeout=SETUP_TIMEOUT_S)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    lines = again.stdout.splitlines()
    for step in range(1, 7):
        assert any(line.startswith(f"[{step}/7]") and "reusing" in line for line in lines), f"step {step} redone"
    assert table(lines) == first


def test_eval_and_index_run_on_a_cluster_with_address(demo, workdir, ray_head, tmp_path):
    fast, data = workdir / "runs" / "fast" / "checkpoint", workdir / "data" / "images"
    local = fastslow("eval", "--checkpoint", str(fast), "--data", str(data), "--split", "test", "--no-progress")
    remote = fastslow("eval", "--checkpoint", str(fast), "--data", str(data), "--split", "test", "--no-progress",
                      "--address", ray_head.gcs)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr[-2000:]
    metrics = ("r1", "r5", "r10", "median_rank", "queries")
    assert {m: json.loads(remote.stdout)[m] for m in metrics} == {m: json.loads(local.stdout)[m] for m in metrics}
    # The demo's table is the held-out test split (20 images the models never trained on), as `eval` reads it.
    scored = json.loads(local.stdout)
    assert scored["split"] == "test" and scored["gallery"] == 20
    assert table(demo.lines)["Fast"][:3] == (scored["r1"], scored["r5"], scored["r10"])
    built = fastslow("index", "--checkpoint", str(fast), "--data", str(data), "--root", str(tmp_path / "index"),
                     "--address", ray_head.gcs, "index.shards=1", "embed.concurrency=1")
    assert built.returncode == 0, built.stderr[-3000:]
    summary = json.loads(built.stdout[built.stdout.index("{"):])
    assert summary["indexed"] == summary["read"] == 70 and summary["errors"] == 0
    assert (tmp_path / "index" / "CURRENT").read_text().strip() == summary["version"]


@pytest.mark.parametrize("command", ["synth", "train", "index", "serve", "search", "eval", "demo"])
def test_every_command_explains_its_options(command):
    shown = fastslow(command, "--help")
    assert shown.returncode == 0 and f"usage: fastslow {command}" in shown.stdout
    assert len(re.findall(r"^  -", shown.stdout, re.M)) >= 3  # options, each with its explanation
    if command not in ("search", "demo"):
        assert "--address" in shown.stdout
