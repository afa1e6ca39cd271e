"""The benchmark table of the paper's trade-off on the synthetic benchmark.

    python -m benchmarks.paper_table --out results/table.json [--quick] [--split val] [--override ...]

Generates the synthetic benchmark from a fixed seed (reused when already there),
trains Fast, Slow and distilled Fast on images and on videos (images: distilled
through uncaptioned images captioned by Slow, with the soft-target student as an
extra row), evaluates text-to-visual retrieval on the test split, or on the
validation split with --split val while choosing the settings (Fast, Slow over the
whole gallery, Fast then Slow at K in 5, 10, 20, 50, distilled Fast, distilled Fast
then Slow), times every method alike (one query's latency at batch 1, queries/s in
batches), and writes FILE.json (`rows`), a Markdown table (FILE.md) and a plot of
R@1, latency and throughput against K (FILE.png) beside it. --update-readme then
rewrites README.md's figures from FILE.json (benchmarks/readme_figures.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fastslow.env import apply_local_safety_env


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.paper_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write; the Markdown table goes beside it (.md)")
    p.add_argument("--quick", action="store_true", help="the quick size (about 100 min on 2 cores, 15 with kept models)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run with tiny random models (tests)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the training (default 0)")
    p.add_argument("--data-dir", help="where the synthetic benchmark is written (default data/bench-<size>-seed<N>)")
    p.add_argument("--modalities", default="image,video", help="comma-separated subset of image,video")
    p.add_argument("--models-dir", default="data/bench-models",
                   help="trained models are kept here and reused by a later run with the same configs, seed and "
                        "training data (quick and full share theirs); 'none' keeps nothing (default %(default)s)")
    p.add_argument("--retrain", action="store_true", help="train every model again (and replace the kept ones)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="the split the rows are on: test for the table, val while choosing its settings "
                        "(default %(default)s)")
    p.add_argument("--override", action="append", default=[], metavar="[PRESET:]KEY=VALUE",
                   help="change a setting of configs/benchmark/table.yaml for this run (repeatable): "
                        "image.fast:train.epochs=20 adds an override to a preset (image.fast, image.slow, video.fast, "
                        "video.slow, distill); uncaptioned=4000 sets a key of the size")
    p.add_argument("--no-students", action="store_true",
                   help="leave out the distilled students and their rows (a tuning run of a Fast or Slow setting: "
                        "the students take hours to train)")
    p.add_argument("--update-readme", nargs="?", const="README.md", metavar="README",
                   help="after a quick or full run on test with the table's own settings, rewrite the README's "
                        "figures from FILE.json (default README.md)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.update_readme and (args.tiny or args.split != "test" or args.override
                               or args.no_students or args.modalities != "image,video"):
        p.error("--update-readme: the README quotes the quick and full tables on test with configs/benchmark/"
                "table.yaml's settings, every modality and method (no --tiny, --split val, --override, "
                "--no-students or --modalities; put chosen settings in the file)")
    return args


def main(argv=None) -> int:
    apply_local_safety_env()
    args = parse_args(argv)
    from benchmarks.table_report import plot_table
    from benchmarks.table_runner import run_table
    from fastslow.errors import FastslowError
    from fastslow.log import setup_logging

    setup_logging("INFO")
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    data_dir = Path(args.data_dir or f"data/bench-{size}-seed{args.seed}")
    started = time.time()
    try:
        models_dir = None if args.models_dir == "none" else Path(args.models_dir)
        rows, notes, timing = run_table(size, args.seed, data_dir, args.modalities.split(","),
                                        progress=not args.no_progress, models_dir=models_dir, retrain=args.retrain,
                                        split=args.split, overrides=args.override,
                                        with_students=not args.no_students)
    except FastslowError as e:
        print(f"paper_table: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"size": size, "split": args.split, "seed": args.seed, "overrides": args.override,
              "students": not args.no_students,
              "data_dir": str(data_dir), "models_dir": args.models_dir, "seconds": round(time.time() - started, 1),
              "timing": timing, "notes": notes, "rows": rows}
    out.write_text(json.dumps(result, indent=2))
    plot_table(rows, out.with_suffix(".png"))
    table = markdown_table(rows)
    title = f"# Benchmark table ({size}, {args.split} split, seed {args.seed})"
    out.with_suffix(".md").write_text(f"{title}\n\n{table}\n\n" + "".join(f"- {n}\n" for n in notes))
    print(table)
    print(f"\nwrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')} in {result['seconds']} s")
    if args.update_readme:
        from benchmarks.readme_figures import keep_table, update_readme

        try:
            update_readme(Path(args.update_readme), [out])
            kept = keep_table(out, Path(args.update_readme))
        except (FastslowError, OSError) as e:
            print(f"paper_table: error: {e}", file=sys.stderr)
            return 2
        print(f"rewrote the figures of {args.update_readme} from {out}; kept the run as {', '.join(map(str, kept))}")
    return 0


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table (chance rows included)."""
    cols = ["modality", "method", "k", "r1", "r5", "r10", "median_rank", "r1_same_queries", "latency_ms",
            "queries_per_s", "speedup_latency", "speedup_throughput", "queries", "gallery"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = {**row, "r1_same_queries": row.get("same_queries", {}).get("r1")}
        lines.append("| " + " | ".join("" if cells.get(c) is None else str(cells[c]) for c in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
