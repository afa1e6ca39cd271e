"""The model sections of `python -m benchmarks.gpu` (benchmarks/gpu.py): Fast and CLIP image embedding, Slow re-ranking."""

from __future__ import annotations

import numpy as np

from benchmarks.gpu_timing import autocast, precisions, sig, timed
from fastslow.log import get_logger

log = get_logger("fastslow.benchmarks.gpu")

WORDS = {"colour": ("red", "green", "blue", "yellow", "purple", "white"),
         "shape": ("circle", "square", "triangle", "cross", "star"), "size": ("small", "large")}


def fast_config():
    """The default Fast of the benchmark table (imported here: it loads torch)."""
    from benchmarks.fast_defaults import DEFAULT_FAST

    return DEFAULT_FAST


def captions(n: int, seed: int = 0) -> list[str]:
    """`n` captions in the synthetic benchmark's style, so Slow's output vocabulary has its size."""
    import random

    rng = random.Random(seed)

    def obj() -> str:
        return " ".join(rng.choice(WORDS[w]) for w in ("size", "colour", "shape"))

    rel = ("to the left of", "to the right of", "above", "below")
    return [f"a {obj()} {rng.choice(rel)} a {obj()}" for _ in range(n)]


def bench_embedding(device, batch: int, warmup: int, iters: int) -> dict:
    """Images/s of the Fast visual encoder and of a ViT-B/32-sized CLIP vision tower."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from fastslow.models.fast import FastModel
    from fastslow.models.vision import CLIP_MEAN, CLIP_STD

    torch.manual_seed(0)
    fast = FastModel(fast_config()).to(device).eval()
    clip_cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, image_size=224, patch_size=32)
    clip = CLIPVisionModel(clip_cfg).to(device).eval()  # random weights: the cost is the architecture's
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1) * 255

    def clip_embed(pixels):
        x = (pixels.permute(0, 3, 1, 2).float() - mean) / std
        return clip(pixel_values=x).pooler_output

    models = [("fast: efficientnet_lite0 128px, mid_tokens + head", 128, fast.encode_visual),
              ("clip vit-b/32 vision tower (random init)", 224, clip_embed)]
    rows = []
    for name, size, fn in models:
        # Generated on the device: the figure is the model's, not the host's decode and copy.
        pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
        for precision in precisions(device):
            with torch.inference_mode(), autocast(device, precision):
                s = timed(lambda: fn(pixels), device, warmup, iters)
            rows.append({"model": name, "image_size": size, "precision": precision, "batch": batch,
                         "images_per_s": sig(batch / s), "ms_per_batch": sig(1000 * s)})
            log.info("embedding: %s", rows[-1])
    return {"batch": batch, "clip_attention": clip.config._attn_implementation, "rows": rows}


def bench_slow(device, queries: int, ks: list[int], warmup: int, iters: int) -> dict:
    """Pairs/s and ms per query of Slow re-ranking K candidates per query from cached item features."""
    import numpy as np
    import torch

    from fastslow.models.slow import SlowConfig
    from fastslow.train.slow_training import make_slow_model
    from fastslow.inference.slow_scores import slow_features, slow_score_matrix

    torch.manual_seed(0)
    texts = captions(max(queries, 200))
    model = make_slow_model(SlowConfig(), texts).to(device).eval()
    items = queries * max(ks)
    size = model.config.vision.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (items, size, size, 3), dtype=np.uint8)
    # The serving re-ranker keeps its features (float16 for a frozen tower) on the host and scores from them.
    features = slow_features(model, pixels).cpu()
    texts = texts[:queries]
    rows = []
    for precision in precisions(device):  # bf16: a re-ranker under autocast (scores still summed in float64)
        for k in ks:
            cand = torch.arange(queries * k).view(queries, k)  # each query its own k items
            with autocast(device, precision):
                s = timed(lambda: slow_score_matrix(model, features, texts, cand), device, warmup, iters)
                one = timed(lambda: slow_score_matrix(model, features, texts[:1], cand[:1]), device, warmup, iters)
            rows.append({"k": k, "precision": precision, "pairs_per_s": sig(queries * k / s),
                         "ms_per_query": sig(1000 * s / queries), "ms_per_batch": sig(1000 * s),
                         "single_query_ms": sig(1000 * one)})
            log.info("slow: %s", rows[-1])
    return {"queries": queries, "ks": list(ks), "items": items, "feature_dtype": str(features.dtype).split(".")[-1],
            "output_vocab": len(model.config.output_vocab), "rows": rows,
            "max_abs_diff_vs_pairwise": _pairwise_check(model, features, texts, device)}


def _pairwise_check(model, features, texts: list[str], device) -> float:
    """The largest gap (nats) between the timed batched scorer in fp32 and the model's plain forward pass,
    one (query, item) pair at a time, on a few pairs: the figures time a scorer that gives the model's scores."""
    import torch

    from fastslow.inference.slow_scores import slow_score_matrix

    cand = torch.arange(6).view(2, 3)
    batched = slow_score_matrix(model, features, texts[:2], cand)
    with torch.inference_mode():
        tokens = model.visual_tokens(features[:6].to(device))
        plain = [[model.score(tokens[j : j + 1], [texts[q]]).item() for j in row.tolist()] for q, row in enumerate(cand)]
    return float(abs(batched - np.asarray(plain)).max())
