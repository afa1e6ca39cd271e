"""A BLIP Slow checkpoint from a local `save_pretrained` folder: the weights, BLIP's preprocessing and tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fastslow.errors import FastslowError
from fastslow.models.blip_slow import (
    CAPTION_PROMPT,
    HEADS,
    RESAMPLES,
    TOKENIZER_PREFIX,
    BlipSlowConfig,
    BlipSlowModel,
    BlipVisionSettings,
    _hf_class,
)
from fastslow.models.checkpoint import save_checkpoint
from fastslow.models.text import tokenizer_files

PIL_RESAMPLE = {3: "bicubic", 2: "bilinear"}  # PIL's filter numbers, as preprocessor_config.json stores them
MAX_LENGTH = {"caption": 40, "itm": 35, "itm+itc": 35}  # BLIP's own: captioning 40 tokens, retrieval 35
ENC_TOKEN = "[ENC]"


def read_preprocessing(local_dir: str, image_size: int) -> BlipVisionSettings:
    """BLIP's image preprocessing from the folder's preprocessor_config.json (or, as transformers 5 saves a
    processor, processor_config.json's "image_processor"), checked against what blip_preprocess reproduces."""
    pre, path = None, Path(local_dir) / "preprocessor_config.json"
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = Path(local_dir) / name
        if not path.is_file():
            continue
        try:
            pre = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FastslowError(f"{path}: not readable JSON ({e})") from e
        pre = pre.get(key) if key and isinstance(pre, dict) else pre
        if isinstance(pre, dict):
            break
    if not isinstance(pre, dict):
        raise FastslowError(f"{local_dir}: no image preprocessing settings (preprocessor_config.json); save the "
                            "BlipProcessor beside the model")
    for key in ("do_resize", "do_rescale", "do_normalize"):
        if pre.get(key, True) is not True:
            raise FastslowError(f"{path}: {key} is {pre[key]!r}; only BLIP's resize, rescale and normalise is supported")
    size = pre.get("size", {"height": image_size, "width": image_size})
    side = size.get("height") if isinstance(size, dict) else size
    if not isinstance(size, dict) or size.get("width") != side or not isinstance(side, int):
        raise FastslowError(f"{path}: size {size!r} is not a square {{height, width}}")
    if side != image_size:
        raise FastslowError(f"{path}: resizes to {side}px but the vision encoder takes {image_size}px")
    resample = PIL_RESAMPLE.get(pre.get("resample", 3))
    if resample not in RESAMPLES:
        raise FastslowError(f"{path}: resample {pre.get('resample')!r} is not bicubic (3) or bilinear (2)")
    try:
        return BlipVisionSettings(image_size=side, resample=resample,
                                  rescale_factor=float(pre.get("rescale_factor", 1 / 255)),
                                  mean=[float(v) for v in pre.get("image_mean", BlipVisionSettings().mean)],
                                  std=[float(v) for v in pre.get("image_std", BlipVisionSettings().std)])
    except (TypeError, ValueError) as e:
        raise FastslowError(f"{path}: bad image_mean / image_std / rescale_factor ({e})") from e


def _tokenizer_files(local_dir: str) -> dict[str, bytes]:
    """The folder's tokenizer, loaded without remote code and saved again: its files by checkpoint name."""
    from transformers import AutoTokenizer

    from fastslow.models.vision import quiet_transformers

    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(local_dir, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FastslowError(f"{local_dir}: the tokenizer does not load ({e})") from e
    return tokenizer_files(tok, TOKENIZER_PREFIX)


def build_blip_slow(local_dir: str, head: str) -> BlipSlowModel:
    """A BlipSlowModel holding the folder's weights and tokenizer; refuses a folder of the wrong BLIP model."""
    from transformers import BlipConfig

    from fastslow.models.vision import quiet_transformers

    if head not in HEADS:
        raise FastslowError(f"--head {head!r}: not one of {', '.join(HEADS)}")
    if not Path(local_dir).is_dir():
        raise FastslowError(f"{local_dir}: no such model folder")
    hf_cls = _hf_class(head)
    try:
        with quiet_transformers():
            hf_config = BlipConfig.from_pretrained(local_dir, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FastslowError(f"{local_dir}: not a BLIP model folder ({e})") from e
    if getattr(hf_config, "model_type", None) != "blip":
        raise FastslowError(f"{local_dir}: a {hf_config.model_type!r} model, not BLIP")
    archs = list(getattr(hf_config, "architectures", None) or [])
    if archs and hf_cls.__name__ not in archs:
        raise FastslowError(f"{local_dir}: holds a {archs[0]}, but head {head!r} needs a {hf_cls.__name__} "
                            f"({'caption' if head != 'caption' else 'itm or itm+itc'} fits this folder)")
    try:
        with quiet_transformers():
            hf, info = hf_cls.from_pretrained(local_dir, local_files_only=True, trust_remote_code=False,
                                              dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise FastslowError(f"{local_dir}: the {hf_cls.__name__} weights do not load ({e})") from e
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # e.g. a retrieval folder read as a captioner: those weights would be random
        raise FastslowError(f"{local_dir}: lacks {len(missing)} weights of a {hf_cls.__name__} (e.g. {missing[0]}); "
                            f"head {head!r} needs that model")
    files = _tokenizer_files(local_dir)
    hf_config = {k: v for k, v in hf.config.to_dict().items() if k != "_name_or_path"}  # no local paths kept
    cfg = BlipSlowConfig(head=head, hf_config=hf_config,
                         vision=read_preprocessing(local_dir, hf.config.vision_config.image_size),
                         prompt=CAPTION_PROMPT if head == "caption" else "", max_length=MAX_LENGTH[head])
    model = BlipSlowModel(cfg, files=files)
    enc = model.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    if head != "caption" and enc is not None and enc != model.tokenizer.unk_token_id:
        cfg.itm_first_token_id = int(enc)  # BLIP's ITM reads [ENC] where the tokenizer puts [CLS]
    model.hf.load_state_dict(hf.state_dict())
    return model.eval()


def save_blip_slow_checkpoint(local_dir: str, out: str, head: str, source: dict) -> None:
    """Write a self-contained BLIP Slow checkpoint (weights, tokenizer, settings) to `out` (local or s3://);
    `source` is the provenance stored in the manifest's extra."""
    model = build_blip_slow(local_dir, head)
    save_checkpoint(model, out, extra={"source": dict(source or {}), "head": head})
