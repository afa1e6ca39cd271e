"""Synthetic benchmark whose captions need cross-attention: bound attributes, spatial relations, motion order."""

from fastslow.synth.generate import SynthConfig, generate, write_dataset
from fastslow.synth.presets import SIZES, ensure_synth, generate_from_cli, synth_config

__all__ = ["SIZES", "SynthConfig", "ensure_synth", "generate", "generate_from_cli", "synth_config", "write_dataset"]
