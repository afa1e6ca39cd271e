"""Named sizes of the synthetic benchmark, and writing one only when it is not already there."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import yaml

from fastslow.errors import FastslowError
from fastslow.log import get_logger
from fastslow.synth.generate import SynthConfig, write_dataset

log = get_logger(__name__)

SIZES = {
    # Seconds to write; for tests and the smoke run.
    "tiny": SynthConfig(n_train=40, n_val=10, n_test=20, n_train_videos=24, n_val_videos=8, n_test_videos=12,
                        image_size=64, video_size=48, video_frames=8),
    # The benchmark's quick run (500 test images, 500 test videos). 500 videos, not fewer: re-ranking the top
    # K = 20 costs at least K/N of Slow over the whole gallery, which must be under a tenth.
    "quick": SynthConfig(image_size=128, video_size=96, n_test_videos=500),
    # The full run: 1,000 test images with 5 captions each, 600 test videos (every motion group key once).
    "full": replace(SynthConfig.full(), image_size=128, video_size=96),
}


def synth_config(size: str, seed: int, overrides: list[str] = ()) -> SynthConfig:
    """The preset `size` with `seed` and `key=value` overrides applied."""
    if size not in SIZES:
        raise FastslowError(f"synth size {size!r}: expected one of {sorted(SIZES)}")
    fields = asdict(SIZES[size]) | {"seed": seed}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or key not in fields:
            raise FastslowError(f"synth setting {override!r}: expected key=value with key one of {sorted(fields)}")
        value = yaml.safe_load(raw)
        fields[key] = tuple(value) if isinstance(value, list) else value
    return SynthConfig(**fields)


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
