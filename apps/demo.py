"""`fastslow demo`: the whole system on the synthetic corpus, from nothing to a search page, in one command.

Steps: write the corpus, train Fast, Slow and a distilled Fast, index the collection with the better
of the two Fast models (by validation R@1), evaluate on the test split, deploy the Serve app on a
local Ray and keep serving until Ctrl-C. Every step records what it was run with in the work
folder; a rerun with the same settings reuses its output instead of redoing it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from fastslow.errors import FastslowError
from fastslow.log import get_logger
from serve_app.config import DEFAULT_PORT

log = get_logger("fastslow.demo")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIGS / "demo.yaml"
STEPS = ("synth", "train fast", "train slow", "distill", "index", "evaluate", "serve")


@dataclass
class DemoPlan:
    """One size of configs/demo.yaml: the configs and overrides of each step."""

    synth: dict
    fast: dict
    slow: dict
    distill: dict
    index: dict
    serve: str
    rerank_k: int


def load_plan(size: str, path: Path = DEMO_CONFIG) -> DemoPlan:
    sizes = yaml.safe_load(path.read_text())
    if size not in sizes:
        raise FastslowError(f"demo size {size!r}: expected one of {sorted(sizes)} (see {path})")
    return DemoPlan(**sizes[size])


class StepRecord:
    """What a step was run with and what it gave, in WORKDIR/steps/NAME.json: a rerun with the same inputs reuses it."""

    def __init__(self, workdir: Path, name: str, inputs: dict):
        self.path = workdir / "steps" / f"{name.replace(' ', '_')}.json"
        self.key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()

    def reused(self) -> dict | None:
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return record["result"] if record.get("key") == self.key else None

    def save(self, result: dict) -> dict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"key": self.key, "result": result}, indent=2, default=str))
        return result


class Demo:
    """The demo's steps over one work folder; each returns its result and says when it reused one."""

    def __init__(self, workdir: str, size: str = "demo", seed: int = 0, progress: bool = True, say=print):
        self.workdir = Path(workdir).resolve()
        self.plan, self.size, self.seed, self.progress, self.say = load_plan(size), size, seed, progress, say
        self.data = self.workdir / "data"
        self.runs = self.workdir / "runs"

    def _step(self, number: int, name: str, inputs: dict, run) -> dict:
        record = StepRecord(self.workdir, name, inputs)
        done = record.reused()
        if done is not None:
            self.say(f"[{number}/{len(STEPS)}] {name}: reusing what an earlier run built")
            return done
        self.say(f"[{number}/{len(STEPS)}] {name} ...")
        started = time.time()
        result = record.save(run())
        self.say(f"[{number}/{len(STEPS)}] {name}: done in {time.time() - started:.0f} s")
        return result

    def synth(self) -> dict:
        from fastslow.synth import ensure_synth

        spec = self.plan.synth
        return self._step(1, "synth", {"synth": spec, "seed": self.seed}, lambda: ensure_synth(
            self.data, self.seed, spec["size"], self.progress, overrides=spec.get("overrides", [])))

    def _train(self, number: int, kind: str, spec: dict, extra: list[str], inputs: dict) -> dict:
        from fastslow.train import run as runs
        from fastslow.config import DistillRunConfig, FastRunConfig, SlowRunConfig, load_config

        cls = {"fast": FastRunConfig, "slow": SlowRunConfig, "distill": DistillRunConfig}[kind]
        overrides = [f"data.path={json.dumps(str(self.data / 'images'))}",
                     f"out={json.dumps(str(self.runs / kind))}", f"train.seed={self.seed}", *extra,
                     *spec.get("overrides", [])]
        cfg = load_config(cls, str(CONFIGS / spec["config"]), overrides)
        name = {"fast": "train fast", "slow": "train slow", "distill": "distill"}[kind]
        return self._step(number, name, {"overrides": overrides, "config": spec, **inputs},
                          lambda: runs.run_training(kind, cfg, progress=self.progress))

    def train(self, corpus: dict) -> tuple[dict, dict, dict]:
        fast = self._train(2, "fast", self.plan.fast, [], {"corpus": corpus})
        slow = self._train(3, "slow", self.plan.slow, [], {"corpus": corpus})
        teacher = [f"teacher={json.dumps(slow['checkpoint'])}"]
        distilled = self._train(4, "distill", self.plan.distill, teacher, {"corpus": corpus, "teacher": slow})
        return fast, slow, distilled

    def index(self, fast_checkpoint: str) -> dict:
        from fastslow.config import IndexRunConfig, load_config
        from fastslow.index.build import build_index

        spec = self.plan.index
        overrides = [f"data.path={json.dumps(str(self.data / 'images'))}", f"checkpoint={json.dumps(fast_checkpoint)}",
                     f"root={json.dumps(str(self.runs / 'index'))}", *spec.get("overrides", [])]
        cfg = load_config(IndexRunConfig, str(CONFIGS / spec["config"]), overrides)
        return self._step(5, "index", {"overrides": overrides, "model": _weights(fast_checkpoint)},
                          lambda: build_index(cfg))

    def evaluate(self, fast: dict, slow: dict, distilled: dict) -> list[dict]:
        from fastslow.data.source import DataConfig
        from fastslow.eval.retrieval import run_eval

        data = DataConfig(path=str(self.data / "images"))
        k = self.plan.rerank_k

        def rows() -> dict:
            table = [("Fast", run_eval(fast["checkpoint"], data, "test", self.progress)),
                     ("Fast distilled from Slow", run_eval(distilled["checkpoint"], data, "test", self.progress)),
                     (f"Fast top {k}, re-ranked by Slow", run_eval(fast["checkpoint"], data, "test", self.progress,
                                                                   rerank=slow["checkpoint"], k=k))]
            return {"rows": [{"method": name, **{m: r[m] for m in ("r1", "r5", "r10", "ms_per_query", "queries",
                                                                    "gallery")}} for name, r in table]}

        inputs = {"models": [_weights(x["checkpoint"]) for x in (fast, slow, distilled)], "k": k}
        return self._step(6, "evaluate", inputs, rows)["rows"]


def _weights(checkpoint: str) -> str:
    from fastslow.models.checkpoint import read_manifest

    return read_manifest(checkpoint)["weights_sha256"]


def format_table(rows: list[dict]) -> str:
    """The evaluation as an aligned text table."""
    head = f"{'method':<34} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'ms/query':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<34} {r['r1']:>6.1f} {r['r5']:>6.1f} {r['r10']:>6.1f} {r['ms_per_query']:>9.2f}")
    q = rows[0]
    lines.append(f"({q['queries']} test captions against {q['gallery']} test images; R@k in %)")
    return "\n".join(lines)


def served_fast(fast: dict, distilled: dict) -> dict:
    """The Fast model the index and the app use: the distilled one unless plain Fast validates better."""
    return fast if fast.get("val", {}).get("r1", 0) > distilled.get("val", {}).get("r1", 0) else distilled


def run_demo(workdir: str, size: str = "demo", port: int = DEFAULT_PORT, seed: int = 0, progress: bool = True,
             exit_when_ready: bool = False, say=print) -> dict:
    """Set everything up, serve, and (unless `exit_when_ready`) keep serving until Ctrl-C."""
    from cluster.connect import connect, free_port
    from fastslow.env import apply_local_safety_env
    from serve_app.launch import start_app, stop_serving, wait_until_interrupted

    apply_local_safety_env()  # the demo is local only: its own Ray, offline, on 127.0.0.1
    demo = Demo(workdir, size, seed, progress, say)
    started = time.time()
    corpus = demo.synth()
    fast, slow, distilled = demo.train(corpus)
    chosen = served_fast(fast, distilled)
    say(f"serving {'distilled ' if chosen is distilled else ''}Fast ({chosen['checkpoint']})")
    connect(None, num_cpus=2, dashboard_port=free_port(), log_to_driver=False)
    try:
        index = demo.index(chosen["checkpoint"])
        rows = demo.evaluate(fast, slow, distilled)
        say(f"[7/{len(STEPS)}] serve: deploying the app ...")
        url = start_app(str(CONFIGS / demo.plan.serve), index["root"], chosen["checkpoint"], slow["checkpoint"],
                        port=port)
        summary = {"workdir": str(demo.workdir), "url": url, "index_version": index["version"],
                   "setup_seconds": round(time.time() - started, 1), "table": rows}
        say("\n" + format_table(rows) + "\n")
        say(f"set-up took {summary['setup_seconds']:.0f} s. Search page: {url}/   (API docs: {url}/docs)")
        if not exit_when_ready:
            say("serving until Ctrl-C ...")
            wait_until_interrupted()
        return summary
    finally:
        stop_serving()
        say("Serve and Ray are shut down.")
