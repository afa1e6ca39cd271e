"""Named sizes of the synthetic benchmark, and writing one only when it is not already there."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import yaml

from fastslow.errors import FastslowError
from fastslow.models.config import dataclass_from_dict
from fastslow.log import get_logger
from fastslow.synth.generate import SynthConfig, write_dataset

log = get_logger(__name__)

SIZES_FILE = Path(__file__).resolve().parents[2] / "configs" / "synth.yaml"


def synth_sizes() -> dict[str, dict]:
    """The named sizes of configs/synth.yaml: each the settings that differ from SynthConfig's defaults."""
    return yaml.safe_load(SIZES_FILE.read_text())


def synth_config(size: str, seed: int, overrides: list[str] = ()) -> SynthConfig:
    """The preset `size` with `seed` and `key=value` overrides applied."""
    sizes = synth_sizes()
    if size not in sizes:
        raise FastslowError(f"synth size {size!r}: expected one of {sorted(sizes)}")
    from fastslow.config import apply_override  # the one KEY=VALUE parser (config pulls in the training settings)

    tree = {**(sizes[size] or {}), "seed": seed}
    for override in overrides:
        apply_override(tree, override)
    return dataclass_from_dict(SynthConfig, tree, where=f"synth settings (size {size})")


def ensure_synth(root: str | Path, seed: int, size: str, progress: bool = True, workers: int = 1,
                 overrides: list[str] = ()) -> dict:
    """Write the benchmark under `root` unless the same config was written there already."""
    cfg = synth_config(size, seed, overrides)
    record = Path(root) / "synth.json"
    if record.exists():
        try:
            if json.loads(record.read_text()).get("config") == json.loads(json.dumps(asdict(cfg))):
                log.info("reusing the synthetic benchmark in %s", root)
                return {"out_dir": str(root), "reused": True}
        except json.JSONDecodeError:
            pass
    return write_dataset(cfg, str(root), progress=progress, workers=workers)


def generate_from_cli(out: str, seed: int, size: str, workers: int, overrides: list[str], progress: bool) -> dict:
    """What `fastslow synth` does."""
    return write_dataset(synth_config(size, seed, overrides), out, progress=progress, workers=workers)
