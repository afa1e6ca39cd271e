"""The command line every Ray job shares: --config YAML with KEY=VALUE overrides, --address, path options."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable


def job_main(prog: str, description: str, config_cls: type, paths: dict[str, tuple[str, str]],
             run: Callable[[object, str | None], dict], argv: list[str] | None = None, epilog: str | None = None,
             headline: Callable[[dict], str] | None = None) -> int:
    """Parse, load the config, run; one line and exit code 2 on a FastslowError, the JSON summary otherwise.

    `paths`: option name -> (config key it sets, help), e.g. {"data": ("data.path", "dataset path")}.
    """
    from fastslow.config import load_config
    from fastslow.env import apply_local_safety_env
    from fastslow.errors import FastslowError
    from fastslow.log import setup_logging

    apply_local_safety_env()
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see configs/)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, as under `ray job submit`, "
                                          "else a local Ray)")
    for option, (key, text) in paths.items():
        parser.add_argument(f"--{option}", help=f"{text}; same as {key}=...")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default: INFO)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config settings, e.g. train.epochs=5")
    args = parser.parse_args(argv)
    setup_logging(args.log_level.upper())
    given = {key: getattr(args, option.replace("-", "_")) for option, (key, _) in paths.items()}
    overrides = [f"{key}={json.dumps(value)}" for key, value in given.items() if value]
    try:
        summary = run(load_config(config_cls, args.config, overrides + args.overrides), args.address)
    except FastslowError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if headline is not None:
        print(headline(summary))
    print(json.dumps(summary, indent=2, default=str))
    return 0
