"""Tiny random pretrained models saved as `transformers` saves them (weights, config, tokenizer, processor), built
offline: a CLIP for Fast and a BLIP captioner for Slow, for the tests that drive the `fastslow pretrained` path."""

from __future__ import annotations

from pathlib import Path

# The benchmark's offline tokenizers (benchmarks.gpu builds the real-size models with them).
from benchmarks.gpu_pretrained import blip_tokenizer as _blip_tokenizer
from benchmarks.gpu_pretrained import clip_tokenizer, gemma_tokenizer  # noqa: F401 - the tests' too


def save_tiny_clip(folder: Path, seed: int = 0) -> str:
    """A tiny CLIP (32-pixel images: shorter side to 36, a 32 centre crop) saved to `folder`."""
    import torch
    import transformers as tf

    layers = dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    tok = clip_tokenizer()
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    cfg = tf.CLIPConfig(text_config=dict(hidden_size=32, max_position_embeddings=77, **ids, **layers),
                        vision_config=dict(hidden_size=32, image_size=32, patch_size=8, **layers), projection_dim=16)
    torch.manual_seed(seed)
    tf.CLIPModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    tf.CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def blip_tokenizer():
    tok = _blip_tokenizer()
    assert len(tok) == 30524 and tok.bos_token_id == 30522  # BLIP's vocabulary size and [DEC] id
    return tok


def save_tiny_blip(folder: Path, kind: str = "caption", size: int = 32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                   seed: int = 0) -> str:
    """A tiny BLIP captioner (`kind` "caption") or retrieval model ("retrieval") with its processor, in `folder`.
    Its random weights are larger than BLIP's defaults so that scores clearly depend on the image."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    cfg = BlipConfig(
        text_config=dict(vocab_size=30524, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, initializer_range=0.2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=size, patch_size=8, initializer_range=0.2),
        projection_dim=16, image_text_hidden_size=16)
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": size, "width": size},
                                                                    image_mean=list(mean), image_std=list(std)),
                              tokenizer=blip_tokenizer())
    cls = {"caption": BlipForConditionalGeneration, "retrieval": BlipForImageTextRetrieval}[kind]
    torch.manual_seed(seed)
    cls(cfg).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)
