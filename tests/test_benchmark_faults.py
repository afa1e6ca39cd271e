"""benchmarks/faults.py: the fault suite run as a table (a Ray-free part of it here), and its totals."""

import json
import subprocess
import sys

import pytest
from helpers import REPO

from benchmarks.faults import markdown, summarise


@pytest.mark.integration  # runs python -m benchmarks.faults
def test_benchmark_runs_the_marked_tests_and_tabulates_their_rows(tmp_path):
    out = tmp_path / "faults.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.faults", "--out", str(out), "-k",
                           "damaged or corrupted_weights or karpathy_and_vatex"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())
    totals = summary["totals"]
    assert totals["tests"] == {"passed": 6, "failed": 0, "skipped": 0}
    # 4 damaged index versions + 1 corrupt checkpoint + 5 bad Karpathy and 4 bad VATEX entries, each refused.
    assert totals["inputs_tried"] == totals["inputs_refused"] == 14
    names = [r["name"] for r in summary["rows"]]
    assert "index version: checksum damaged or mismatched" in names and all(r["passed"] for r in summary["rows"])
    table = (tmp_path / "faults.md").read_text()
    assert "6 tests passed, 0 failed" in table and "| checkpoint: one byte of the weights flipped | 1 | 1 |" in table
    assert table in done.stdout


def test_a_fault_counts_as_survived_only_when_its_test_passed():
    rows = [{"kind": "fault", "name": "a", "passed": True, "injected": 2, "items_in": 10, "indexed": 7, "reported": 3,
             "queries": 40, "failed_queries": 0, "foreign_ids": 0},
            {"kind": "fault", "name": "b", "passed": False, "injected": 1, "items_in": 5, "indexed": 4, "reported": 0},
            {"kind": "fault", "name": "e", "passed": True, "injected": 1, "nodes_removed": 1, "queries": 9,
             "failed_queries": 0},
            {"kind": "input", "name": "c", "passed": True, "tried": 40, "refused": 31, "five_xx": 0},
            {"kind": "input", "name": "d", "passed": False, "refused": True, "message": "x | y"}]
    totals = summarise(rows, {"passed": 2, "failed": 2, "skipped": 0})
    assert (totals["faults_injected"], totals["faults_survived"]) == (4, 3)
    assert (totals["nodes_removed"], totals["queries_during_faults"], totals["queries_failed"]) == (1, 49, 0)
    assert (totals["inputs_tried"], totals["inputs_refused"]) == (41, 31)
    assert (totals["items_in"], totals["items_indexed"], totals["items_reported"], totals["items_unaccounted"]) == \
        (15, 11, 3, 1)
    table = markdown({"totals": totals, "seconds": 3.0, "command": "pytest -m faults"}, rows)
    assert "| b | 1 | NO | 5 | 4 + 0 |  |  |" in table and "| d | 1 | NO | x \\| y |" in table
    assert "| e | 1 | yes |  |  | 9 (0) | 1 |" in table and "- Ray nodes removed 1" in table
