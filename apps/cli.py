"""The `fastslow` command line: demo, synth, train, index, serve, search, eval.

Each step runs here, or on a Ray cluster with `--address` (e.g. `auto` on a cluster node, or
`ray://HEAD:10001`): training then runs as a Ray Train job, indexing as a Ray Data job, synth and
eval as a Ray task, and serve deploys the app to that cluster's Serve.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pathlib import Path

from fastslow.env import apply_local_safety_env
from fastslow.errors import FastslowError

SERVE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "serve_synth.yaml"


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset: a Karpathy/VATEX JSON, a folder of them, tar shards, or a CSV/JSONL/Parquet "
                                  "manifest; local path or s3://")
    p.add_argument("--format", default=None, help="karpathy, vatex, webdataset, manifest, or auto (default: auto)")
    p.add_argument("--media-root", default=None, help="folder or s3:// prefix holding the images/videos "
                                                      "(default: beside the annotations)")
    p.add_argument("--media", choices=["image", "video"], default=None, help="use only this media type")


def _data_overrides(args) -> list[str]:
    pairs = {"data.path": args.data, "data.format": args.format, "data.media_root": args.media_root, "data.media": args.media}
    return [f"{k}={json.dumps(v)}" for k, v in pairs.items() if v is not None]


def _add_address(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--address", help=f"Ray cluster to run on ({what}); local paths must then be absolute and "
                                     "reachable from the cluster, or s3://. Default: this machine")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default: INFO)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser = argparse.ArgumentParser(prog="fastslow", description=__doc__,
                                     epilog="synth, train and index also take KEY=VALUE settings after their options, e.g. "
                                            "`fastslow synth --out d n_test=100`, `fastslow train fast train.epochs=5`. "
                                            "`fastslow COMMAND --help` explains each command's options.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", parents=[common], help="write the synthetic benchmark (Karpathy-format images, VATEX-format videos)",
                       description="Write the synthetic benchmark: two-object scenes whose captions bind colour, shape, "
                                   "size and position, with swapped twins in the same split; videos whose captions "
                                   "name motion direction and event order. Deterministic from --seed.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", choices=["tiny", "quick", "full"], default="quick", help="preset sizes (default quick)")
    p.add_argument("--workers", type=int, default=1, help="processes used to render (output does not depend on it)")
    _add_address(p, "as one Ray task")

    p = sub.add_parser("train", parents=[common], help="train a model (here, or as a Ray Train job with --address)",
                       description="Train a model in this process, or on a Ray cluster with --address. Settings come "
                                   "from --config (YAML) with KEY=VALUE overrides, e.g. train.epochs=5 model.vision.kind=tiny_cnn.")
    p.add_argument("model", choices=["fast", "slow", "distill"],
                   help="fast: the dual encoder; slow: the cross-attention captioner; distill: a Fast student "
                        "taught by a Slow checkpoint (teacher=PATH)")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--out", help="run folder for the checkpoint, config and history (local or s3://)")
    _add_address(p, "as a Ray Train job; workers from job.num_workers, GPUs where the cluster has them")
    _add_data_args(p)

    p = sub.add_parser("index", parents=[common], help="embed a collection and publish a sharded FAISS index version",
                       description="Embed every item with a Fast checkpoint (Ray Data, partition by partition, "
                                   "resumable), build the FAISS shards and move CURRENT to the new version. Settings "
                                   "from --config (configs/index_*.yaml) with KEY=VALUE overrides, e.g. "
                                   "index.shards=4 index.factory=IVF1024,Flat embed.concurrency=4.")
    p.add_argument("--checkpoint", help="the Fast checkpoint that embeds the items (local or s3://)")
    p.add_argument("--root", help="index folder holding versions/ and CURRENT (local or s3://)")
    p.add_argument("--config", help="YAML config (see configs/index_synth_images.yaml)")
    _add_address(p, "as a Ray Data job")
    _add_data_args(p)

    p = sub.add_parser("serve", parents=[common], help="deploy the search app (Ray Serve) and serve until Ctrl-C",
                       description="Deploy the app from its Serve config YAML with this index and these models, wait "
                                   "until every shard and the re-ranker answer, and print the URL. On this machine it "
                                   "serves until Ctrl-C; with --address it deploys to the cluster and returns.")
    p.add_argument("--index-root", required=True, help="index folder (the one `fastslow index --root` wrote)")
    p.add_argument("--fast", required=True, help="the Fast checkpoint the index was built with")
    p.add_argument("--slow", default="", help="the Slow checkpoint that re-ranks (default: none, Fast order only)")
    p.add_argument("--config", default=str(SERVE_CONFIG), help=f"Serve config YAML (default {SERVE_CONFIG.name})")
    p.add_argument("--port", type=int, default=None, help="HTTP port on 127.0.0.1 (default: the YAML's, 8000)")
    _add_address(p, "the app is deployed to its Serve and keeps running there")

    p = sub.add_parser("search", parents=[common], help="query a running search endpoint from the terminal",
                       description="POST the query to URL/search and print the results with both scores and the "
                                   "answer's per-stage timings.")
    p.add_argument("query", help="the text to search for")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the app's base URL (default http://127.0.0.1:8000)")
    p.add_argument("-k", "--k", type=int, default=10, help="results to return (default 10)")
    p.add_argument("--rerank-k", type=int, default=20, help="Fast candidates Slow re-ranks (default 20)")
    p.add_argument("--no-rerank", action="store_true", help="Fast order only")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")
    p.add_argument("--api-key", default=os.environ.get("FASTSLOW_API_KEY") or None,
                   help="sent as header X-API-Key, for an app that requires one (default: $FASTSLOW_API_KEY)")

    p = sub.add_parser("demo", parents=[common], help="the whole system on synthetic data: train, index, serve",
                       description="Start a local Ray, write the synthetic corpus, train Fast and Slow and distil, "
                                   "build the index, print the evaluation table, deploy the app and serve the search "
                                   "page until Ctrl-C. A rerun reuses what the work folder already holds.")
    p.add_argument("--workdir", default="runs/demo", help="where the corpus, models and index go (default runs/demo)")
    p.add_argument("--size", default="demo", help="demo (default, ~10 min on 2 cores) or tiny (seconds, for tests); "
                                                  "see configs/demo.yaml")
    p.add_argument("--port", type=int, default=8000, help="HTTP port on 127.0.0.1 (default 8000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus and the training runs (default 0)")
    p.add_argument("--exit-when-ready", action="store_true", help="shut down once set up and checked, do not serve")

    p = sub.add_parser("eval", parents=[common], help="text-to-visual retrieval metrics of a checkpoint on a split",
                       description="R@1, R@5, R@10 and median rank: every caption of the split is a query, "
                                   "the split's items are the gallery.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (local or s3://)")
    p.add_argument("--split", default="test", help="split to evaluate (default test; 'all' for every item)")
    p.add_argument("--num-frames", type=int, default=8, help="frames sampled per video (default 8)")
    p.add_argument("--json", dest="json_out", help="also write the metrics to this file")
    p.add_argument("--rerank", metavar="SLOW_CHECKPOINT", help="re-rank Fast's top K with this Slow checkpoint")
    p.add_argument("--k", type=int, default=20, help="candidates per query re-ranked by Slow (default 20)")
    p.add_argument("--fast-weight", type=float, default=0.0,
                   help="final score = Slow log-likelihood + this x Fast cosine (default 0: the Slow order)")
    _add_address(p, "as one Ray task")
    _add_data_args(p)
    return parser


def _on_cluster(address: str | None, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` here, or as one Ray task on the cluster at `address`."""
    if not address:
        return fn(*args, **kwargs)
    import ray

    from cluster.connect import connect

    connect(address)
    return ray.get(ray.remote(num_cpus=1)(fn).remote(*args, **kwargs))


def _cmd_synth(args) -> dict:
    from fastslow.synth import generate_from_cli

    return _on_cluster(args.address, generate_from_cli, args.out, seed=args.seed, size=args.size,
                       workers=args.workers, overrides=args.overrides, progress=not args.no_progress)


def _cmd_train(args) -> dict:
    from fastslow.train import run as runs
    from fastslow.config import DistillRunConfig, FastRunConfig, SlowRunConfig, load_config

    config_cls = {"fast": FastRunConfig, "slow": SlowRunConfig, "distill": DistillRunConfig}[args.model]
    overrides = _data_overrides(args) + ([f"out={json.dumps(args.out)}"] if args.out else []) + args.overrides
    cfg = load_config(config_cls, args.config, overrides)
    if args.address:
        from jobs.training import run_job

        return run_job(args.model, cfg, args.address)
    return runs.run_training(args.model, cfg, progress=not args.no_progress)


def _cmd_index(args) -> dict:
    from fastslow.config import IndexRunConfig, load_config
    from jobs.build_index import run_build

    given = {"checkpoint": args.checkpoint, "root": args.root}
    overrides = _data_overrides(args) + [f"{k}={json.dumps(v)}" for k, v in given.items() if v] + args.overrides
    return run_build(load_config(IndexRunConfig, args.config, overrides), args.address)


def _cmd_serve(args) -> dict | None:
    from cluster.connect import connect, free_port
    from jobs.training import absolute
    from serve_app.serve import start_app, stop_serving, wait_until_interrupted

    paths = [absolute(p) if p else "" for p in (args.index_root, args.fast, args.slow)]
    if args.address:
        connect(args.address, log_to_driver=False)
        url = start_app(args.config, *paths, port=args.port)
        return {"url": url, "address": args.address}
    connect(None, dashboard_port=free_port(), log_to_driver=False)
    try:
        url = start_app(args.config, *paths, port=args.port)
        print(f"serving on {url}/ (search page), {url}/docs (API); Ctrl-C stops", flush=True)
        wait_until_interrupted()
    finally:
        stop_serving()
    return None


def _cmd_search(args) -> dict | None:
    from serve_app.client import format_answer, search

    answer = search(args.url, args.query, k=args.k, rerank=not args.no_rerank, rerank_k=args.rerank_k,
                    timeout=args.timeout, api_key=args.api_key)
    if args.json:
        return answer
    print(format_answer(answer))
    return None


def _cmd_demo(args) -> dict | None:
    from apps.demo import run_demo

    run_demo(args.workdir, size=args.size, port=args.port, seed=args.seed, progress=not args.no_progress,
             exit_when_ready=args.exit_when_ready, say=lambda line: print(line, flush=True))
    return None


def _cmd_eval(args) -> dict:
    from fastslow import storage
    from fastslow.data.source import DataConfig
    from fastslow.config import load_config
    from fastslow.eval.retrieval import run_eval

    overrides = [o.removeprefix("data.") for o in _data_overrides(args)] + [f"num_frames={args.num_frames}"]
    data = load_config(DataConfig, None, overrides)
    split = None if args.split == "all" else args.split
    result = _on_cluster(args.address, run_eval, args.checkpoint, data, split, progress=not args.no_progress,
                         rerank=args.rerank, k=args.k, fast_weight=args.fast_weight)
    if args.json_out:
        storage.write_text(args.json_out, json.dumps(result, indent=2))
    return result


COMMANDS = {"synth": _cmd_synth, "train": _cmd_train, "index": _cmd_index, "serve": _cmd_serve,
            "search": _cmd_search, "eval": _cmd_eval, "demo": _cmd_demo}
OVERRIDABLE = ("synth", "train", "index")


def main(argv: list[str] | None = None) -> int:
    apply_local_safety_env()
    parser = build_parser()
    # KEY=VALUE settings may come anywhere after the command; argparse cannot mix them with positionals.
    args, extra = parser.parse_known_args(argv)
    args.overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in args.overrides]
    if unknown or (args.overrides and args.command not in OVERRIDABLE):
        parser.error(f"unrecognized arguments: {' '.join(unknown or args.overrides)}")
    from fastslow.log import setup_logging

    setup_logging(args.log_level.upper())
    try:
        result = COMMANDS[args.command](args)
    except FastslowError as e:
        print(f"fastslow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastslow {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - users get one line; --log-level DEBUG shows the traceback
        from fastslow.log import get_logger

        get_logger("cli").debug("traceback", exc_info=True)
        print(f"fastslow {args.command}: error: {type(e).__name__}: {e} (rerun with --log-level DEBUG for details)",
              file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
