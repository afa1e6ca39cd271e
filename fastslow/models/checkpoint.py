"""Checkpoints: a directory (local or s3://) with model.safetensors and config.json; loading runs no code.

A model may also keep files of its own there (a pretrained model's tokenizer): `checkpoint_files()` gives them
as {relative name: bytes}, the manifest lists their sha256, and loading hands them back, checked, as `files=`."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from fastslow import storage
from fastslow.errors import FastslowError
from fastslow.models.config import FastConfig, dataclass_from_dict, dataclass_to_dict
from fastslow.models.fast import FastEncoder, FastModel

FORMAT = "fastslow-checkpoint"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def _write_bytes(uri: str, data: bytes) -> None:
    storage.write_bytes(uri, data)


def _read_bytes(uri: str) -> bytes:
    return storage.read_bytes(uri)


# model_type -> (config dataclass, model class taking that config); the Slow model registers itself.
MODEL_TYPES: dict[str, tuple[type, type[nn.Module]]] = {"fast": (FastConfig, FastModel)}


def register_model_type(name: str, config_cls: type, model_cls: type[nn.Module]) -> None:
    """Make `load_checkpoint` able to rebuild models of `model_cls` (whose `model_type` is `name`)."""
    MODEL_TYPES[name] = (config_cls, model_cls)


def _model_type(model: nn.Module) -> str:
    for name, (_, cls) in MODEL_TYPES.items():
        if type(model) is cls:
            return name
    raise FastslowError(f"checkpoint: model class {type(model).__name__} is not registered in MODEL_TYPES")


def _frozen_prefixes(model: nn.Module) -> list[str]:
    get = getattr(model, "frozen_pretrained_prefixes", None)
    return list(get()) if get else []


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Digest of named tensors (names, dtypes, shapes, values), to pin the pretrained towers a head was trained on."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        # Byte view: works for every dtype (bfloat16 has no numpy equivalent) and 0-d tensors.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _split_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """State dict split into what is stored and, per frozen pretrained prefix, what is not."""
    prefixes = _frozen_prefixes(model)
    stored: dict[str, torch.Tensor] = {}
    frozen: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    for k, v in model.state_dict().items():
        owner = next((p for p in prefixes if k.startswith(p)), None)
        if owner is None:
            stored[k] = v
        else:
            frozen[owner][k] = v
    return stored, frozen


def save_checkpoint(model: nn.Module, uri: str, extra: dict | None = None) -> None:
    """Save `model` to directory `uri`: weights (minus frozen pretrained towers) and a JSON manifest."""
    model_type = _model_type(model)
    stored, frozen = _split_state(model)
    # Clones: safetensors refuses views and tensors sharing memory (tied weights).
    weights = save_safetensors({k: v.detach().cpu().contiguous().clone() for k, v in stored.items()})
    files = getattr(model, "checkpoint_files", dict)()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "model_type": model_type,
        "config": dataclass_to_dict(model.config),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "frozen_pretrained": sorted(frozen),
        "frozen_pretrained_sha256": {p: tensors_sha256(t) for p, t in sorted(frozen.items())},
        "extra": extra or {},
    }
    if files:
        manifest["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    try:
        manifest_text = json.dumps(manifest, indent=2, sort_keys=True)
    except TypeError as e:
        raise FastslowError(f"checkpoint {uri}: `extra` is not JSON-serialisable ({e})") from e
    for name, data in sorted(files.items()):
        _write_bytes(storage.join(uri, name), data)
    _write_bytes(storage.join(uri, WEIGHTS_FILE), weights)
    # The manifest last: a directory with a manifest has its weights.
    _write_bytes(storage.join(uri, CONFIG_FILE), manifest_text.encode())


def read_manifest(uri: str) -> dict[str, Any]:
    """The checkpoint's config.json, checked for format and version."""
    path = storage.join(uri, CONFIG_FILE)
    try:
        manifest = json.loads(_read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FastslowError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FastslowError(f"{path}: not a fastslow checkpoint manifest")
    if manifest.get("version") != VERSION:
        raise FastslowError(f"{path}: checkpoint version {manifest.get('version')!r} unsupported (expected {VERSION})")
    if manifest.get("model_type") not in MODEL_TYPES:
        raise FastslowError(
            f"{path}: unknown model_type {manifest.get('model_type')!r} (known: {', '.join(MODEL_TYPES)})"
        )
    return manifest


def _read_files(uri: str, expected: dict[str, str]) -> dict[str, bytes]:
    """The model's own files of a checkpoint, each checked against the manifest's sha256."""
    files = {}
    for name, sha in sorted(expected.items()):
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
            raise FastslowError(f"{storage.join(uri, CONFIG_FILE)}: file name {name!r} is not a plain relative path")
        path = storage.join(uri, name)
        files[name] = _read_bytes(path)
        digest = hashlib.sha256(files[name]).hexdigest()
        if digest != sha:
            raise FastslowError(f"{path}: sha256 {digest[:16]}... does not match the manifest (corrupted?)")
    return files


def load_checkpoint(uri: str, map_location: str | torch.device = "cpu",
                    visual_only: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at `uri` (in eval mode) and return it with its manifest. `visual_only`: a model
    type with a separable text side (TEXT_PREFIXES) is built without it (the other types whole)."""
    manifest = read_manifest(uri)
    config_cls, model_cls = MODEL_TYPES[manifest["model_type"]]
    cfg = dataclass_from_dict(config_cls, manifest.get("config"), where=f"{storage.join(uri, CONFIG_FILE)}: config")
    weights_uri = storage.join(uri, WEIGHTS_FILE)
    data = _read_bytes(weights_uri)
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("weights_sha256"):
        raise FastslowError(f"{weights_uri}: sha256 {digest[:16]}... does not match the manifest (corrupted?)")
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError) as e:
        raise FastslowError(f"{weights_uri}: not a readable safetensors file ({e})") from e

    text_prefixes = tuple(getattr(model_cls, "TEXT_PREFIXES", ())) if visual_only else ()
    expected_frozen = [p for p in manifest.get("frozen_pretrained", []) if not p.startswith(text_prefixes)]
    if text_prefixes:
        model = model_cls(cfg, text=False)
        state = {k: v for k, v in state.items() if not k.startswith(text_prefixes)}
    elif manifest.get("files"):
        model = model_cls(cfg, files=_read_files(uri, manifest["files"]))
    else:
        model = model_cls(cfg)
    prefixes = _frozen_prefixes(model)
    if sorted(prefixes) != sorted(expected_frozen):
        raise FastslowError(
            f"{uri}: frozen pretrained towers {sorted(prefixes)} differ from the manifest's {sorted(expected_frozen)}"
        )
    stored, frozen = _split_state(model)
    for prefix, tensors in frozen.items():
        expected = manifest.get("frozen_pretrained_sha256", {}).get(prefix)
        if expected is not None and tensors_sha256(tensors) != expected:
            raise FastslowError(
                f"{uri}: the pretrained weights of {prefix.rstrip('.')} differ from those it was trained with"
            )
    missing = sorted(set(stored) - set(state))
    unexpected = sorted(set(state) - set(stored))
    if missing or unexpected:
        pairs = (("missing", missing), ("unexpected", unexpected))
        detail = "; ".join(f"{label} {len(keys)} keys, e.g. {keys[0]}" for label, keys in pairs if keys)
        raise FastslowError(f"{weights_uri}: weights do not fit the {manifest['model_type']} model ({detail})")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = str(e).strip().splitlines()
        raise FastslowError(f"{weights_uri}: weights do not fit the model ({first[-1].strip() if first else e})") from e
    return model.to(map_location).eval(), manifest


def load_model(checkpoint: str, expected: type | tuple[type, ...], visual_only: bool = False):
    """A checkpoint's model, refusing any other model type than `expected` (a class, or a tuple of classes named
    after the first) with a clear error. `visual_only`: see load_checkpoint."""
    model, _ = load_checkpoint(checkpoint, visual_only=visual_only)
    if not isinstance(model, expected):
        first = expected[0] if isinstance(expected, tuple) else expected
        name = first.__name__.removesuffix("Model").removesuffix("Encoder")
        raise FastslowError(f"{checkpoint}: expected a {name} checkpoint, found a {type(model).__name__}")
    return model



def is_fast_type(model_type: str) -> bool:
    """Whether a manifest's model_type is a Fast dual encoder (trained from scratch or from a pretrained model)."""
    entry = MODEL_TYPES.get(model_type)
    return entry is not None and issubclass(entry[1], FastEncoder)
