"""Model towers, the Fast dual encoder and checkpoints (plain PyTorch, no Ray)."""

from fastslow.models.checkpoint import MODEL_TYPES, load_checkpoint, register_model_type, save_checkpoint
from fastslow.models.config import (
    FastConfig,
    TextTowerConfig,
    VisionTowerConfig,
    config_from_dict,
    config_to_dict,
    dataclass_from_dict,
    dataclass_to_dict,
)
from fastslow.models.fast import FastEncoder, FastModel
from fastslow.models.slow import SlowConfig, SlowModel  # noqa: F401  (importing registers the "slow" type)
from fastslow.models.pretrained_fast import PretrainedFastModel  # noqa: F401  (registers "pretrained_fast")
from fastslow.models.blip_slow import BlipSlowModel  # noqa: F401  (registers the "blip_slow" type)
from fastslow.models.text import TextOutput, TextTower, build_text_tower
from fastslow.models.vision import VisionOutput, VisionTower, build_vision_tower

__all__ = [
    "MODEL_TYPES",
    "FastConfig",
    "FastEncoder",
    "FastModel",
    "PretrainedFastModel",
    "TextOutput",
    "TextTower",
    "TextTowerConfig",
    "VisionOutput",
    "VisionTower",
    "VisionTowerConfig",
    "build_text_tower",
    "build_vision_tower",
    "config_from_dict",
    "config_to_dict",
    "dataclass_from_dict",
    "dataclass_to_dict",
    "load_checkpoint",
    "register_model_type",
    "save_checkpoint",
]
