"""The `fastslow` command line: demo, synth, train, index, serve, search, eval, pretrained.

Each step runs here, or on a Ray cluster with `--address` (e.g. `auto` on a cluster node, or
`ray://HEAD:10001`): training then runs as a Ray Train job, indexing as a Ray Data job, synth and
eval as a Ray task, and serve deploys the app to that cluster's Serve.
"""

from __future__ import annotations

import argparse
import json
import sys


from apps.cli_parser import LOCAL_RAY, SERVE_CONFIG, build_parser  # noqa: F401  (SERVE_CONFIG: the serve default)
from fastslow.errors import FastslowError



def _data_overrides(args) -> list[str]:
    pairs = {"data.path": args.data, "data.format": args.format, "data.media_root": args.media_root, "data.media": args.media}
    return [f"{k}={json.dumps(v)}" for k, v in pairs.items() if v is not None]


def _ray_address(address: str | None) -> str | None:
    """What cluster.connect.connect takes: the address, or None (RAY_ADDRESS, else a new local Ray) for none or `local`."""
    return None if address in (None, LOCAL_RAY) else address


def _on_cluster(address: str | None, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` here, or as one Ray task on the cluster at `address`."""
    if not address:
        return fn(*args, **kwargs)
    import ray

    from cluster.connect import connect

    connect(_ray_address(address))
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
        from jobs.train_job import run_job

        return run_job(args.model, cfg, _ray_address(args.address))
    return runs.run_training(args.model, cfg, progress=not args.no_progress)


def _cmd_index(args) -> dict:
    from fastslow.config import IndexRunConfig, load_config
    from jobs.index_job import run_build

    given = {"checkpoint": args.checkpoint, "root": args.root}
    overrides = _data_overrides(args) + [f"{k}={json.dumps(v)}" for k, v in given.items() if v] + args.overrides
    cfg = load_config(IndexRunConfig, args.config, overrides + (["append=true"] if args.append else []))
    if args.delete is not None or args.compact:
        return _change_index(cfg, args.delete)
    return run_build(cfg, _ray_address(args.address))


def _change_index(cfg, delete: str | None) -> dict:
    """`fastslow index --delete IDS` / `--compact`: a new version of the live one, published, then old versions
    collected as a build's are."""
    from cluster.connect import storage_path
    from fastslow.index.changes import collect_garbage, compact, delete_items

    root = storage_path(cfg.root)
    if delete is None:
        summary = compact(root)
    else:
        ids = _id_list(delete)
        summary = delete_items(root, ids, cfg.compact_at)
    if cfg.keep_versions is not None:
        summary["versions_removed"] = len(collect_garbage(root, cfg.keep_versions))
    return summary


def _id_list(text: str) -> list[str]:
    """Ids from `a,b,c` or `@FILE` (one per line)."""
    from fastslow import storage

    if text.startswith("@"):
        try:
            lines = storage.read_text(text[1:]).splitlines()
        except (OSError, storage.MissingFileError) as e:
            raise FastslowError(f"--delete {text}: cannot read the file ({e})") from None
    else:
        lines = text.split(",")
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise FastslowError(f"--delete {text!r}: no ids given")
    return ids


def _cmd_serve(args) -> dict | None:
    from cluster.connect import connect, free_port
    from cluster.connect import storage_path as absolute
    from serve_app.launch import start_app, stop_serving, wait_until_interrupted
    from serve_app.remote_deploy import deploy_as_job, is_dashboard_url

    if is_dashboard_url(args.address):
        # From anywhere the dashboard answers: a Ray job deploys the app with this project's tree and waits on the
        # head's proxy (serve_app/remote_deploy.py); paths are resolved on the cluster.
        endpoint = deploy_as_job(args.address, args.config, args.index_root, args.fast, args.slow, port=args.port,
                                 python=args.cluster_python)
        print(_reach(endpoint), flush=True)
        return endpoint
    paths = [absolute(p) if p else "" for p in (args.index_root, args.fast, args.slow)]
    if _ray_address(args.address):
        connect(_ray_address(args.address), log_to_driver=False)
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


def _reach(endpoint: dict) -> str:
    """How to reach an app deployed by `fastslow serve --address URL`: its URL on the head, and, for a proxy on the
    head's loopback, the port forwarding that brings it here (as `ray dashboard` does for the dashboard)."""
    url, port = endpoint["url"], endpoint["port"]
    line = f"index version {endpoint['index_version']} is served at {url}/ on the cluster's head (deploy job {endpoint['job']})"
    if endpoint["host"] in ("127.0.0.1", "localhost", "::1"):
        line += (f"; it listens on the head's loopback only: from another machine, forward it first with "
                 f"`ray dashboard ray_cluster.yaml --port {port} --remote-port {port}` (or ssh -L {port}:127.0.0.1:{port} "
                 f"HEAD), then search {url}/")
    return line


def _cmd_search(args) -> dict | None:
    from serve_app.client import format_answer, read_filter, read_image, search

    answer = search(args.url, args.query, k=args.k, rerank=not args.no_rerank, rerank_k=args.rerank_k,
                    timeout=args.timeout, api_key=args.api_key, image=read_image(args.image), like=args.like,
                    image_weight=args.image_weight, filter_spec=read_filter(args.filter))
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


def _cmd_pretrained(args) -> dict:
    from fastslow.models.pretrained_ref import resolve, weights_sha256

    ref = resolve(args.model, args.revision)
    source = {**ref.source, "weights_sha256": weights_sha256(ref.path)}
    if args.kind == "slow":
        from fastslow.models.blip_slow_build import save_blip_slow_checkpoint

        save_blip_slow_checkpoint(str(ref.path), args.out, args.head, source)
        return {"checkpoint": args.out, "kind": "slow", "head": args.head, "source": source}
    from fastslow.models.checkpoint import save_checkpoint
    from fastslow.models.pretrained_fast import from_pretrained_folder

    model = from_pretrained_folder(ref.path, source)
    save_checkpoint(model, args.out)
    cfg = model.config
    return {"checkpoint": args.out, "kind": "fast", "family": cfg.family, "embed_dim": cfg.embed_dim,
            "image_size": cfg.vision.image_size, **model.score_params(), "source": source}


COMMANDS = {"synth": _cmd_synth, "train": _cmd_train, "index": _cmd_index, "serve": _cmd_serve,
            "search": _cmd_search, "eval": _cmd_eval, "demo": _cmd_demo, "pretrained": _cmd_pretrained}
OVERRIDABLE = ("synth", "train", "index")


def _index_headline(s: dict) -> str:
    """The line of a build, an append, a delete or a compaction."""
    if "deleted" in s:
        missing = f"; {len(s['not_found'])} ids not held: {', '.join(s['not_found'][:5])}" if s["not_found"] else ""
        return f"deleted {s['deleted']} items from {s['base']}{missing}; version {s['version']} is live"
    if "shards_rebuilt" in s:
        return f"{s['shards_rebuilt']} shards of {s['base']} rebuilt whole; version {s['version']} is live"
    if s.get("appended_to") and not s["indexed"]:
        return (f"nothing new to add ({s['already_indexed']} items held already, {s['errors']} errors); version "
                f"{s['version']} stays live under {s['root']}")
    added = f"indexed {s['indexed']}"
    if s.get("appended_to"):
        added = f"added {s['indexed']} new items to {s['appended_to']}"
    return (f"{added} of {s['read']} items read ({s['errors']} errors, listed in {s['errors_file']}) in "
            f"{s['seconds']} s, {s['items_per_s']} items/s; version {s['version']} is live under {s['root']}")


HEADLINES = {"index": _index_headline}  # a line a person reads before the JSON summary


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    # KEY=VALUE settings may come anywhere after the command; argparse cannot mix them with positionals.
    args, extra = parser.parse_known_args(argv)
    args.overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in args.overrides]
    if unknown or (args.overrides and args.command not in OVERRIDABLE):
        parser.error(f"unrecognized arguments: {' '.join(unknown or args.overrides)}")
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The `fastslow` command; `prog` names it in error lines (the `python -m jobs.X` aliases pass theirs)."""
    args = _parse(build_parser(), argv)
    from fastslow.log import get_logger, setup_logging

    setup_logging(args.log_level.upper())
    name = prog or f"fastslow {args.command}"
    try:
        result = COMMANDS[args.command](args)
    except FastslowError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - users get one line; --log-level DEBUG shows the traceback
        get_logger("cli").debug("traceback", exc_info=True)
        print(f"{name}: error: {type(e).__name__}: {e} (rerun with --log-level DEBUG for details)", file=sys.stderr)
        return 1
    if result is not None:
        if args.command in HEADLINES and not getattr(args, "json", False):
            print(HEADLINES[args.command](result))
        print(json.dumps(result, indent=2, default=str))
    return 0


def job_alias(command: list[str], prog: str, argv: list[str] | None = None) -> int:
    """`python -m jobs.X ARGS`, kept for `ray job submit`: `fastslow COMMAND ARGS` run as a Ray job, on --address if
    given, else on RAY_ADDRESS (set by `ray job submit`), else on a Ray started here."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--address" or a.startswith("--address=") for a in argv):
        argv += ["--address", LOCAL_RAY]
    return main([*command, *argv], prog=prog)


if __name__ == "__main__":
    sys.exit(main())
