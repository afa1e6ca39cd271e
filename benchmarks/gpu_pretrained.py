"""The pretrained-model section of `python -m benchmarks.gpu` (benchmarks/gpu.py).

CLIP ViT-B/32 and SigLIP base/16-224 as Fast (image embedding, images/s), BLIP base as Slow (re-ranking, pairs/s),
at their real sizes (the transformers config defaults) with random weights: no download, and the cost depends on
the architecture only. Each model goes the way a user's does: a transformers folder (`save_pretrained`: weights,
tokenizer, image processor) -> `from_pretrained_folder` + `save_checkpoint` (Fast) or
`save_blip_slow_checkpoint` (Slow), as `fastslow pretrained` writes them -> `load_checkpoint` / `load_slow`, as
indexing and the re-ranker load them. `--quick` builds tiny configs of the same families along the same path.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.gpu_timing import autocast, precisions, sig, timed
from fastslow.log import get_logger

log = get_logger("fastslow.benchmarks.gpu")

# family -> the name of the real-size model (the config defaults), and the tiny one --quick builds instead.
FAST_NAMES = {"clip": "clip vit-b/32", "siglip": "siglip base/16-224"}
BLIP_NAME = "blip base (vit-b/16 384px, bert-base decoder)"
TINY = "tiny (--quick)"
CACHE_NOTE = ("one query, its K candidates' vision-encoder states computed once beforehand (the item cache warm, "
              "as a serving re-ranker keeps them, float16 on the host): the time is slow_score_matrix alone")


def _layers(quick: bool, hidden: int = 32) -> dict:
    return dict(hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2) if quick else {}


def clip_tokenizer():
    """A byte-level CLIP tokenizer with no merges (514 tokens): ids fit the real 49,408-row embedding."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def gemma_tokenizer():
    """A byte-fallback SigLIP (Gemma-style) tokenizer of 288 tokens: ids fit SigLIP's 32,000-row embedding."""
    from transformers import Siglip2Tokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    vocab |= {f"<0x{b:02X}>": 5 + b for b in range(256)}
    vocab |= {c: len(vocab) + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz▁")}
    return Siglip2Tokenizer(vocab=vocab, merges=[], model_max_length=64)


def blip_tokenizer():
    """BLIP's tokenizer: bert-base-uncased's WordPiece (MiniLM's packaged copy) plus [DEC] and [ENC]: 30,524."""
    from transformers import AutoTokenizer

    from fastslow.models.text import minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tok


def _ids(tok) -> dict:
    return dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def hf_config(name: str, quick: bool, tok=None):
    """The transformers config: the class defaults (the real sizes), or tiny ones of the same family."""
    import transformers as tf

    if name == "clip":
        text = dict(_ids(tok) if tok else {}, **_layers(quick), **({"max_position_embeddings": 77} if quick else {}))
        vision = dict(_layers(quick), image_size=32, patch_size=8) if quick else {}
        return tf.CLIPConfig(text_config=text, vision_config=vision, **({"projection_dim": 16} if quick else {}))
    if name == "siglip":
        text = dict(_ids(tok) if tok else {}, **_layers(quick, 24),
                    **({"max_position_embeddings": 64, "projection_size": 32} if quick else {}))
        vision = dict(_layers(quick), image_size=32, patch_size=8) if quick else {}
        return tf.SiglipConfig(text_config=text, vision_config=vision)
    if not quick:
        return tf.BlipConfig()  # its text defaults are BLIP's tokenizer's: 30,524 tokens, [DEC] = 30522
    return tf.BlipConfig(text_config=dict(vocab_size=30524, max_position_embeddings=64, **_layers(True)),
                         vision_config=dict(image_size=32, patch_size=8, **_layers(True)),
                         projection_dim=16, image_text_hidden_size=16)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def fast_vision_params(hf_model) -> int:
    """Parameters encode_visual runs: the vision tower, and CLIP's visual projection (SigLIP's head is inside)."""
    proj = getattr(hf_model, "visual_projection", None)
    return _count(hf_model.vision_model) + (_count(proj) if proj is not None else 0)


def blip_scoring_params(hf_model, head: str) -> int:
    """Parameters a (query, item) pair runs through once its item's vision states are cached."""
    if head == "caption":
        return _count(hf_model.text_decoder)
    return _count(hf_model.text_encoder) + _count(hf_model.itm_head)


def real_sizes() -> dict:
    """Names and parameter counts of the real-size models, built on the meta device (no memory, nothing run)."""
    import torch
    import transformers as tf

    from fastslow.models.vision import quiet_transformers

    with torch.device("meta"), quiet_transformers():
        clip, siglip = tf.CLIPModel(hf_config("clip", False)), tf.SiglipModel(hf_config("siglip", False))
        cap = tf.BlipForConditionalGeneration(hf_config("blip", False))
        itm = tf.BlipForImageTextRetrieval(hf_config("blip", False))

    def vit(c) -> dict:
        v = c.vision_config
        return {"hidden": v.hidden_size, "layers": v.num_hidden_layers, "patch": v.patch_size, "image_size": v.image_size}

    return {"clip": {"model": FAST_NAMES["clip"], **vit(clip.config), "params": _count(clip),
                     "vision_params": fast_vision_params(clip)},
            "siglip": {"model": FAST_NAMES["siglip"], **vit(siglip.config), "params": _count(siglip),
                       "vision_params": fast_vision_params(siglip)},
            # Unique parameters: the caption decoder's output layer is tied to its word embeddings (the hub's
            # "247M" counts that 23.4M matrix twice).
            "blip_caption": {"model": BLIP_NAME + ", caption", **vit(cap.config), "params": _count(cap),
                             "vision_params": _count(cap.vision_model),
                             "scoring_params": blip_scoring_params(cap, "caption"),
                             "vocab": cap.config.text_config.vocab_size},
            "blip_itm": {"model": BLIP_NAME + ", itm", **vit(itm.config), "params": _count(itm),
                         "vision_params": _count(itm.vision_model), "scoring_params": blip_scoring_params(itm, "itm")}}


def _fast_folder(family: str, quick: bool, folder: Path) -> None:
    """A transformers folder of a random-weight CLIP/SigLIP: weights, config, tokenizer, image processor."""
    import torch
    import transformers as tf

    tok = clip_tokenizer() if family == "clip" else gemma_tokenizer()
    cfg = hf_config(family, quick, tok)
    torch.manual_seed(0)
    if family == "clip":
        model = tf.CLIPModel(cfg)
        proc = (tf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}) if quick
                else tf.CLIPImageProcessorPil())  # openai/clip-vit-base-patch32's: shorter side 224, 224 crop
    else:
        model = tf.SiglipModel(cfg)
        proc = tf.SiglipImageProcessorPil(**({"size": {"height": 32, "width": 32}} if quick else {}))  # 224 x 224
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    proc.save_pretrained(folder)


def build_fast(family: str, quick: bool, root: Path):
    """A PretrainedFastModel as indexing loads it: folder -> from_pretrained_folder -> checkpoint -> load."""
    from fastslow.models.checkpoint import load_checkpoint, save_checkpoint
    from fastslow.models.pretrained_fast import from_pretrained_folder

    folder, ckpt = root / f"{family}_hf", root / f"{family}_ckpt"
    _fast_folder(family, quick, folder)
    save_checkpoint(from_pretrained_folder(folder, {"kind": "benchmark", "weights": "random"}), str(ckpt))
    shutil.rmtree(folder)
    model, _ = load_checkpoint(str(ckpt))
    shutil.rmtree(ckpt)
    return model


def build_blip(head: str, quick: bool, root: Path):
    """A BlipSlowModel as the re-ranker loads it: folder -> save_blip_slow_checkpoint -> load_slow."""
    import torch
    import transformers as tf

    from fastslow.inference.slow_scores import load_slow
    from fastslow.models.blip_slow_build import save_blip_slow_checkpoint

    folder, ckpt = root / f"blip_{head}_hf", root / f"blip_{head}_ckpt"
    cls = tf.BlipForConditionalGeneration if head == "caption" else tf.BlipForImageTextRetrieval
    torch.manual_seed(0)
    cls(hf_config("blip", quick)).eval().save_pretrained(folder)
    proc = tf.BlipImageProcessorPil(**({"size": {"height": 32, "width": 32}} if quick else {}))  # 384 x 384
    tf.BlipProcessor(image_processor=proc, tokenizer=blip_tokenizer()).save_pretrained(folder)
    save_blip_slow_checkpoint(str(folder), str(ckpt), head, {"kind": "benchmark", "weights": "random"})
    shutil.rmtree(folder)
    model = load_slow(str(ckpt))
    shutil.rmtree(ckpt)
    return model


def bench_pretrained(device, batch: int, ks: list[int], warmup: int, iters: int, quick: bool,
                     itm: bool = True) -> dict:
    """Images/s of CLIP and SigLIP through PretrainedFastModel.encode_visual; BLIP pairs/s and ms per query."""
    root = Path(tempfile.mkdtemp(prefix="fastslow-bench-pretrained-"))
    try:
        return {"sizes": TINY if quick else "real (transformers config defaults)",
                "weights": "random (no download): the cost is the architecture's",
                "build": "save_pretrained folder -> fastslow's checkpoint builders -> load_checkpoint / load_slow",
                "real_sizes": real_sizes(),
                "embedding": _embedding(device, batch, warmup, iters, quick, root),
                "rerank": _rerank(device, ks, warmup, iters, quick, itm, root)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _embedding(device, batch: int, warmup: int, iters: int, quick: bool, root: Path) -> dict:
    import torch

    rows = []
    for family in FAST_NAMES:
        t0 = time.perf_counter()
        model = build_fast(family, quick, root).to(device).eval()
        built = time.perf_counter() - t0
        size = model.config.vision.image_size
        # uint8 at the size items are decoded to, made on the device: the model's cost, preprocessing included.
        pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
        for precision in precisions(device):
            with torch.inference_mode(), autocast(device, precision):
                s = timed(lambda: model.encode_visual(pixels), device, warmup, iters)
                dim = model.encode_visual(pixels[:1]).shape[-1]
            rows.append({"model": f"{family} {TINY}" if quick else FAST_NAMES[family],
                         "family": family, "image_size": size, "vision_params": fast_vision_params(model.model),
                         "embed_dim": int(dim), "precision": precision, "batch": batch,
                         "images_per_s": sig(batch / s), "ms_per_batch": sig(1000 * s),
                         "build_s": round(built, 1)})
            log.info("pretrained embedding: %s", rows[-1])
        del model
    return {"batch": batch, "input": "uint8 (B,H,W,3) at the model's image_size, on the device",
            "path": "PretrainedFastModel.encode_visual: preprocessing, vision tower, projection, L2 norm", "rows": rows}


def _rerank(device, ks: list[int], warmup: int, iters: int, quick: bool, itm: bool, root: Path) -> dict:
    import torch

    from benchmarks.gpu_models import captions
    from fastslow.inference.slow_scores import slow_features, slow_score_matrix

    query = captions(1, seed=1)[:1]
    heads = [("caption", list(ks))] + ([("itm", [min(ks)])] if itm else [])
    rows, models = [], {}
    for head, head_ks in heads:
        t0 = time.perf_counter()
        model = build_blip(head, quick, root).to(device).eval()
        built = time.perf_counter() - t0
        size = model.config.vision.image_size
        pixels = np.random.default_rng(0).integers(0, 256, (max(head_ks), size, size, 3), dtype=np.uint8)
        features = slow_features(model, pixels).cpu()  # the warm item cache: on the host, float16
        finite = True
        for precision in precisions(device):
            for k in head_ks:
                cand = torch.arange(k).view(1, k)  # K distinct items
                with autocast(device, precision):
                    s = timed(lambda: slow_score_matrix(model, features, query, cand), device, warmup, iters)
                    finite &= bool(np.isfinite(slow_score_matrix(model, features, query, cand)).all())
                rows.append({"model": f"blip {TINY}" if quick else "blip base", "head": head, "k": k,
                             "precision": precision, "pairs_per_s": sig(k / s), "ms_per_query": sig(1000 * s)})
                log.info("pretrained rerank: %s", rows[-1])
        models[head] = {"image_size": size, "params": _count(model), "scoring_params": blip_scoring_params(model.hf, head),
                        "vision_tokens": int(features.shape[1]), "feature_dtype": str(features.dtype).split(".")[-1],
                        "query_tokens_scored": int(model.scored_token_counts(query)[0]),
                        "pairs_per_pass": model.max_pairs, "scores_finite": finite, "build_s": round(built, 1)}
        del model, features
    return {"queries": 1, "query": query[0], "ks": list(ks), "timed": CACHE_NOTE, "models": models, "rows": rows}
