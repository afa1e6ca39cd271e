"""Model configs as small dataclasses, and generic dataclass <-> dict helpers that reject unknown keys."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastslow.errors import FastslowError

T = TypeVar("T")

VISION_KINDS = ("efficientnet_lite0", "hf", "tiny_cnn")
TEXT_KINDS = ("minilm", "hf", "tiny_transformer")
VIDEO_POOLINGS = ("mean", "max")
VISION_POOLINGS = ("global", "mid_tokens")
TEXT_POOLINGS = ("mean", "attention")


def _check_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FastslowError(f"{where}: unknown value {value!r} (expected one of {', '.join(choices)})")


def _check_positive(where: str, **values: int | float) -> None:
    for name, v in values.items():
        if v <= 0:
            raise FastslowError(f"{where}.{name}: must be positive, got {v!r}")


@dataclass
class VisionTowerConfig:
    """Which image backbone to use; `hf` takes a local dir or hub id, `tiny_cnn` is random for tests."""

    kind: str = "efficientnet_lite0"
    name_or_path: str | None = None
    image_size: int = 128  # for `hf` models with a fixed input size, the model's own size wins
    trainable: bool = False
    width: int = 32  # tiny_cnn only
    depth: int = 2  # tiny_cnn only

    def __post_init__(self) -> None:
        _check_choice("vision.kind", self.kind, VISION_KINDS)
        _check_positive("vision", image_size=self.image_size, width=self.width, depth=self.depth)
        if self.kind == "hf" and not self.name_or_path:
            raise FastslowError("vision.name_or_path: required when vision.kind is 'hf'")


@dataclass
class TextTowerConfig:
    """Which text backbone to use; `hf` takes a local dir or hub id, `tiny_transformer` is random for tests."""

    kind: str = "minilm"
    name_or_path: str | None = None
    max_length: int = 32
    trainable: bool = False
    width: int = 64  # tiny_transformer only
    depth: int = 2
    heads: int = 2
    # minilm/hf: keep only the first N encoder layers (0 = all). A query pays the text tower at serving
    # time, so a shallower tower is what keeps Fast's share of a Fast+Slow query small.
    layers: int = 0

    def __post_init__(self) -> None:
        _check_choice("text.kind", self.kind, TEXT_KINDS)
        _check_positive("text", max_length=self.max_length, width=self.width, depth=self.depth, heads=self.heads)
        if self.layers < 0:
            raise FastslowError(f"text.layers: must be 0 (all) or positive, got {self.layers}")
        if self.kind == "hf" and not self.name_or_path:
            raise FastslowError("text.name_or_path: required when text.kind is 'hf'")
        if self.kind == "tiny_transformer" and self.width % self.heads:
            raise FastslowError(f"text.width: {self.width} is not divisible by text.heads {self.heads}")


@dataclass
class FastConfig:
    """The Fast dual encoder: two towers, projection heads into `embed_dim`, a learned temperature.

    The code defaults are the generic starting point, for a config that leaves a key out or for no config at
    all: frozen towers, global pooling, MLP heads. They are no tuned preset, and they stay as they are (runs
    without a config rely on them). The presets live in configs/*.yaml (e.g. configs/fast_synth_images.yaml,
    the synthetic benchmark's measured settings, which the benchmark table and the demo load), one file each.
    """

    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    embed_dim: int = 256
    head_hidden: int = 512  # 0 = linear head
    init_temperature: float = 0.07
    video_pooling: str = "mean"  # over frames' tower features, before the head (global pooling only)
    # global: the tower's pooled vector. mid_tokens: every position of the stage-before-last map
    # through a learned per-token MLP, then mean and max over positions (and frames): keeps small
    # objects' colour and shape, which a global average washes out.
    vision_pooling: str = "global"
    token_hidden: int = 512  # mid_tokens: width of the per-token MLP
    # mean: the text tower's mean over tokens. attention: that mean plus a learned query attending over tokens.
    text_pooling: str = "mean"
    visual_dropout: float = 0.0  # on the visual head's input, in training (the text side overfits less)

    def __post_init__(self) -> None:
        _check_positive("fast", embed_dim=self.embed_dim, init_temperature=self.init_temperature,
                        token_hidden=self.token_hidden)
        if self.head_hidden < 0:
            raise FastslowError(f"fast.head_hidden: must be >= 0, got {self.head_hidden}")
        if not 0.01 <= self.init_temperature <= 1.0:  # training keeps the logit scale in [0, log 100]
            raise FastslowError(f"fast.init_temperature: must be in [0.01, 1], got {self.init_temperature}")
        if not 0.0 <= self.visual_dropout < 1.0:
            raise FastslowError(f"fast.visual_dropout: must be in [0, 1), got {self.visual_dropout}")
        _check_choice("fast.video_pooling", self.video_pooling, VIDEO_POOLINGS)
        _check_choice("fast.vision_pooling", self.vision_pooling, VISION_POOLINGS)
        _check_choice("fast.text_pooling", self.text_pooling, TEXT_POOLINGS)


def dataclass_to_dict(obj: Any) -> dict:
    """A (nested) dataclass as plain JSON/YAML-ready dicts."""
    return dataclasses.asdict(obj)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check (and for nested dataclasses, build) one value against its annotated type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _convert(value, opt, where)
            except FastslowError as e:
                errors.append(str(e))
        raise FastslowError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return dataclass_from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise FastslowError(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise FastslowError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is a subclass of int: `width: true` must not pass as 1
    if tp is int and isinstance(value, bool):
        raise FastslowError(f"{where}: expected int, got bool")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise FastslowError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def dataclass_from_dict(cls: type[T], d: Any, where: str = "config") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys, missing fields and wrong types are FastslowErrors."""
    if not isinstance(d, dict):
        raise FastslowError(f"{where}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise FastslowError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))} (expected some of {', '.join(fields)})"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in d:
            kwargs[name] = _convert(d[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise FastslowError(f"{where}: missing required key {name}")
    try:
        return cls(**kwargs)
    except FastslowError:
        raise
    except (TypeError, ValueError) as e:
        raise FastslowError(f"{where}: {e}") from e


def config_to_dict(cfg: Any) -> dict:
    """A model config as a plain dict (same as dataclass_to_dict)."""
    return dataclass_to_dict(cfg)


def config_from_dict(cls: type[T], d: Any) -> T:
    """A model config from a plain dict (same as dataclass_from_dict)."""
    return dataclass_from_dict(cls, d, where=getattr(cls, "__name__", "config"))
