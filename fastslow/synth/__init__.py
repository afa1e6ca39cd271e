"""Synthetic benchmark whose captions need cross-attention: bound attributes, spatial relations, motion order."""

from fastslow.synth.generate import SynthConfig, generate, write_dataset
from fastslow.synth.presets import ensure_synth, generate_from_cli, synth_config, synth_sizes

__all__ = ["SynthConfig", "ensure_synth", "generate", "generate_from_cli", "synth_config", "synth_sizes", "write_dataset"]
