"""The fault suite as a table: faults injected and survived, inputs tried and refused, items in and accounted for.

    python -m benchmarks.faults --out out/faults.json            # the whole suite, about 9 min on 2 cores
    python -m benchmarks.faults --out out/faults.json -k publish # a part of it (a pytest -k expression)

It runs the tests marked `faults` (tests/test_faults_*.py, among them whole Ray nodes removed under the index
job, the Serve app and training; the serve hardening tests, the training worker kill, damaged checkpoints and
index versions, the media route's traversal cases: the same tests as the normal test command, with the same
asserts) with FASTSLOW_FAULT_LOG set. Each test records the rows of
this table (tests/conftest.py, `fault_record`) and whether it passed: a fault counts as survived only when
its test passed. Writes FILE.json and FILE.md beside it, prints the Markdown; exit 1 when a test failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORTEN_PATH = re.compile(r"(?<![\w:/])/\S*/(?=[^/\s]+)")  # a local path's folders (tests' temp dirs): ".../name"


def run_suite(log_path: str, junit_path: str, select: str | None) -> tuple[int, float, str]:
    """Run the marked tests; (pytest's exit code, seconds, the command)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "faults", "-q", "-p", "no:cacheprovider", f"--junitxml={junit_path}",
           *(["-k", select] if select else [])]
    env = {**os.environ, "FASTSLOW_FAULT_LOG": log_path}
    t0 = time.monotonic()
    code = subprocess.run(cmd, cwd=REPO, env=env).returncode
    return code, time.monotonic() - t0, " ".join(["pytest", *cmd[3:]])


def test_outcomes(junit_path: str) -> dict[str, int]:
    """{'passed', 'failed', 'skipped'} counted from pytest's JUnit XML."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if not os.path.exists(junit_path):
        return counts
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        counts["failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"] += 1
    return counts


def summarise(rows: list[dict], outcomes: dict[str, int]) -> dict:
    """The table's totals from the recorded rows."""
    faults = [r for r in rows if r["kind"] == "fault"]
    inputs = [r for r in rows if r["kind"] == "input"]
    with_items = [r for r in rows if "items_in" in r]
    return {
        "tests": outcomes,
        "faults_injected": sum(int(r.get("injected", 1)) for r in faults),
        "faults_survived": sum(int(r.get("injected", 1)) for r in faults if r["passed"]),
        "inputs_tried": sum(int(r.get("tried", 1)) for r in inputs),
        "inputs_refused": sum(int(r["refused"]) for r in inputs if r["passed"]),  # a count, or True for one
        "http_5xx": sum(int(r.get("five_xx", 0)) for r in inputs),
        "items_in": sum(r["items_in"] for r in with_items),
        "items_indexed": sum(r["indexed"] for r in with_items),
        "items_reported": sum(r["reported"] for r in with_items),
        "items_unaccounted": sum(r["items_in"] - r["indexed"] - r["reported"] for r in with_items),
        "queries_during_faults": sum(int(r.get("queries", 0)) for r in faults),
        "queries_failed": sum(int(r.get("failed_queries", 0)) for r in faults),
        "ids_outside_live_version": sum(int(r.get("foreign_ids", 0)) for r in faults),
        "nodes_removed": sum(int(r.get("nodes_removed", 0)) for r in faults),  # whole Ray nodes (test_faults_nodes)
    }


def markdown(summary: dict, rows: list[dict]) -> str:
    t = summary["totals"]
    lines = [f"Fault suite: {t['tests']['passed']} tests passed, {t['tests']['failed']} failed "
             f"({summary['seconds']:.0f} s, `{summary['command']}`).", "",
             f"- faults injected {t['faults_injected']}, survived {t['faults_survived']}",
             f"- inputs tried {t['inputs_tried']}, refused or reported {t['inputs_refused']}, HTTP 5xx {t['http_5xx']}",
             f"- items in {t['items_in']} = indexed {t['items_indexed']} + reported {t['items_reported']} "
             f"(unaccounted: {t['items_unaccounted']})",
             f"- queries answered during faults {t['queries_during_faults']}, failed {t['queries_failed']}, "
             f"ids outside the live version {t['ids_outside_live_version']}",
             f"- Ray nodes removed {t.get('nodes_removed', 0)}", "",
             "| fault | injected | survived | items in | indexed + reported | queries (failed) | nodes removed |",
             "|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "fault"):
        items = f"{r['items_in']}" if "items_in" in r else ""
        accounted = f"{r['indexed']} + {r['reported']}" if "items_in" in r else ""
        queries = f"{r['queries']} ({r['failed_queries']})" if "queries" in r else ""
        nodes = f"{r['nodes_removed']}" if "nodes_removed" in r else ""
        lines.append(f"| {r['name']} | {r.get('injected', 1)} | {'yes' if r['passed'] else 'NO'} | {items} | "
                     f"{accounted} | {queries} | {nodes} |")
    lines += ["", "| input | tried | refused | what it was told |", "|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "input"):
        said = SHORTEN_PATH.sub(".../", str(r.get("message", ""))).replace("|", "\\|").replace("\n", " ")
        said = said if len(said) <= 110 else said[:107] + "..."
        lines.append(f"| {r['name']} | {r.get('tried', 1)} | {int(r['refused']) if r['passed'] else 'NO'} | {said} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON to write (the Markdown goes beside it, .md)")
    parser.add_argument("-k", dest="select", help="run only the fault tests matching this pytest -k expression")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fastslow-faults-") as tmp:
        log, junit = os.path.join(tmp, "rows.jsonl"), os.path.join(tmp, "junit.xml")
        code, seconds, command = run_suite(log, junit, args.select)
        rows = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
        outcomes = test_outcomes(junit)
    summary = {"command": command, "seconds": round(seconds, 1), "totals": summarise(rows, outcomes), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    text = markdown(summary, rows)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text)
    print(text)
    return 0 if code == 0 and outcomes["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
