"""The `fastslow` command line: synth, train, eval."""

from __future__ import annotations

import argparse
import json
import sys

from fastslow.env import apply_local_safety_env
from fastslow.errors import FastslowError


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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default: INFO)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser = argparse.ArgumentParser(prog="fastslow", description=__doc__,
                                     epilog="synth and train also take KEY=VALUE settings after their options, e.g. "
                                            "`fastslow synth --out d n_test=100`, `fastslow train fast train.epochs=5`.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", parents=[common], help="write the synthetic benchmark (Karpathy-format images, VATEX-format videos)",
                       description="Write the synthetic benchmark: two-object scenes whose captions bind colour, shape, "
                                   "size and position, with swapped twins in the same split; videos whose captions "
                                   "name motion direction and event order. Deterministic from --seed.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", choices=["tiny", "quick", "full"], default="quick", help="preset sizes (default quick)")
    p.add_argument("--workers", type=int, default=1, help="processes used to render (output does not depend on it)")

    p = sub.add_parser("train", parents=[common], help="train a model in this process",
                       description="Train a model in this process. Settings come from --config (YAML) with KEY=VALUE "
                                   "overrides, e.g. train.epochs=5 model.vision.kind=tiny_cnn.")
    p.add_argument("model", choices=["fast", "slow", "distill"],
                   help="fast: the dual encoder; slow: the cross-attention captioner; distill: a Fast student "
                        "taught by a Slow checkpoint (teacher=PATH)")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--out", help="run folder for the checkpoint, config and history (local or s3://)")
    _add_data_args(p)

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
    _add_data_args(p)
    return parser


def _cmd_synth(args) -> dict:
    from fastslow.synth import generate_from_cli

    return generate_from_cli(args.out, seed=args.seed, size=args.size, workers=args.workers,
                             overrides=args.overrides, progress=not args.no_progress)


def _cmd_train(args) -> dict:
    from fastslow import runs
    from fastslow.config import DistillRunConfig, FastRunConfig, SlowRunConfig, load_config

    config_cls = {"fast": FastRunConfig, "slow": SlowRunConfig, "distill": DistillRunConfig}[args.model]
    overrides = _data_overrides(args) + ([f"out={json.dumps(args.out)}"] if args.out else []) + args.overrides
    return runs.run_training(args.model, load_config(config_cls, args.config, overrides), progress=not args.no_progress)


def _cmd_eval(args) -> dict:
    from fastslow import storage
    from fastslow.config import DataConfig, load_config
    from fastslow.runs import run_eval

    overrides = [o.removeprefix("data.") for o in _data_overrides(args)] + [f"num_frames={args.num_frames}"]
    data = load_config(DataConfig, None, overrides)
    split = None if args.split == "all" else args.split
    result = run_eval(args.checkpoint, data, split, progress=not args.no_progress, rerank=args.rerank, k=args.k,
                      fast_weight=args.fast_weight)
    if args.json_out:
        storage.write_text(args.json_out, json.dumps(result, indent=2))
    return result


COMMANDS = {"synth": _cmd_synth, "train": _cmd_train, "eval": _cmd_eval}


def main(argv: list[str] | None = None) -> int:
    apply_local_safety_env()
    parser = build_parser()
    # KEY=VALUE settings may come anywhere after the command; argparse cannot mix them with positionals.
    args, extra = parser.parse_known_args(argv)
    args.overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in args.overrides]
    if unknown or (args.overrides and args.command not in ("synth", "train")):
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
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
