"""Training throughput of the Ray jobs against the one-process loop, side by side in one run.

    python -m benchmarks.training --out out/training.json [--train-items 800] [--epochs 4]

For each job (fast, slow, distill) on the same synthetic images: the one-process loop
(`fastslow train`'s code) and the Ray Train path (`jobs.train_job.run_job`, on a local Ray)
with 1 worker and with 2 workers. Reports the steady-state samples/s of the training steps
(median over steps, the first few left out), the wall time (Ray: start-up, data and
checkpoints included) and the overhead ratios of the Ray path against the one-process loop.
The two CPUs of a small machine are shared: 1 worker gets both, 2 workers one each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fastslow.env import apply_local_safety_env

WARMUP_STEPS = 3  # left out of the steady-state throughput


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write (a Markdown table goes beside it)")
    p.add_argument("--train-items", type=int, default=800, help="synthetic training images (default 800)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of every run (default 4)")
    p.add_argument("--jobs", default="fast,slow,distill", help="comma-separated subset of fast,slow,distill")
    p.add_argument("--data-dir", help="where the synthetic images are written (default data/bench-training)")
    return p.parse_args(argv)


def configs(data: str, root: str, epochs: int):
    """Run configs of the three jobs: the default frozen towers at 64 px (features cached per worker)."""
    from fastslow.config import DistillRunConfig, FastRunConfig, SlowRunConfig, load_config

    common = [f"data.path={data}", f"train.epochs={epochs}", "train.batch_size=64", "model.vision.image_size=64",
              "job.log_every=1000", "data.val_split=null"]
    fast = load_config(FastRunConfig, None, [*common, f"out={root}/fast"])
    slow = load_config(SlowRunConfig, None, [*common, f"out={root}/slow", "train.batch_size=16"])
    distill = load_config(DistillRunConfig, None, [*common, f"out={root}/distill"])
    return {"fast": fast, "slow": slow, "distill": distill}


def steady_samples_per_s(history: list[dict]) -> float:
    rates = [h["samples_per_s"] for h in history[WARMUP_STEPS:]] or [h["samples_per_s"] for h in history]
    return statistics.median(rates)


def one_process(kind: str, cfg) -> dict:
    from fastslow.data.source import load_data_split
    from fastslow.train.run import prepare_training

    started = time.time()
    split = load_data_split(cfg.data, cfg.data.train_split, cfg.model.vision.image_size, progress=False)
    run = prepare_training(kind, cfg, split, progress=False)
    history = run.fit(cfg.train, progress=False)
    return {"path": "one process", "workers": 1, "steps": len(history),
            "samples_per_s": round(steady_samples_per_s(history), 1), "wall_s": round(time.time() - started, 1)}


def ray_job(kind: str, cfg, workers: int) -> dict:
    from jobs.train_job import run_job

    cfg = replace(cfg, out=f"{cfg.out}-ray{workers}",
                  job=replace(cfg.job, num_workers=workers, cpus_per_worker=2 // workers))
    started = time.time()
    summary = run_job(kind, cfg)
    with open(Path(cfg.out) / "history.json") as f:
        history = json.load(f)
    return {"path": "ray train", "workers": workers, "steps": summary["total_steps"],
            "samples_per_s": round(steady_samples_per_s(history), 1), "wall_s": round(time.time() - started, 1)}


def main(argv=None) -> int:
    apply_local_safety_env()
    args = parse_args(argv)
    from cluster.connect import connect
    from fastslow.log import setup_logging
    from fastslow.synth.generate import write_dataset
    from fastslow.synth.presets import synth_config

    setup_logging("WARNING")
    data_dir = Path(args.data_dir or "data/bench-training")
    if not (data_dir / "images").exists():
        write_dataset(synth_config("tiny", 0, [f"n_train={args.train_items}", "n_val=10", "n_test=10",
                                               "n_train_videos=0", "n_val_videos=0", "n_test_videos=0",
                                               "image_size=64"]), str(data_dir), progress=False)
    # One logical CPU beyond the two cores: Ray Data's split coordinator and Ray Train's controller must
    # find room beside 2 workers of 1 CPU each. Workers run as many torch threads as CPUs they reserved.
    connect(None, num_cpus=3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastslow-bench-") as root:
        runs = configs(str((data_dir / "images").resolve()), root, args.epochs)
        slow_teacher = None
        for kind in args.jobs.split(","):
            cfg = runs[kind]
            if kind == "distill":
                if slow_teacher is None:  # the distill job needs a Slow teacher: train one, untimed
                    from fastslow.train.run import run_training

                    slow_teacher = run_training("slow", runs["slow"], progress=False)["checkpoint"]
                cfg = replace(cfg, teacher=slow_teacher)
            base = one_process(kind, cfg)
            results = [base] + [ray_job(kind, cfg, w) for w in (1, 2)]
            for r in results:
                r.update(job=kind, throughput_vs_one_process=round(r["samples_per_s"] / base["samples_per_s"], 3),
                         wall_vs_one_process=round(r["wall_s"] / base["wall_s"], 3))
                rows.append(r)
                print(json.dumps(r), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"train_items": args.train_items, "epochs": args.epochs, "rows": rows}, indent=2))
    cols = ["job", "path", "workers", "steps", "samples_per_s", "throughput_vs_one_process", "wall_s",
            "wall_vs_one_process"]
    table = "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                      ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows])
    out.with_suffix(".md").write_text(f"# Training throughput ({args.train_items} images, {args.epochs} epochs)\n\n"
                                      f"{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
