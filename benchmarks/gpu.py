"""GPU throughput of the three hot loops, torch only (no Ray): runs on a bare CUDA machine.

    python -m benchmarks.gpu --out out/gpu.json          (on an H100; a .md goes beside the JSON)
    python -m benchmarks.gpu --out /tmp/gpu.json --device cpu --quick      (a smoke run, under a minute)

1. Image embedding, images/s at `--batch` (256): the default Fast vision tower (EfficientNet-Lite0,
   128 px, mid_tokens pooling and head, as benchmarks.fast_defaults.DEFAULT_FAST; packaged weights) and a
   ViT-B/32-sized CLIP vision tower (transformers, random weights, 224 px). uint8 images in, as indexing
   feeds them. On CUDA under bfloat16 autocast and in fp32; on CPU fp32.
2. Slow re-ranking, caption-item pairs/s and ms per query at K = 20, 50, 100: the default SlowModel
   (`SlowConfig()`, untrained: cost does not depend on the weights) scoring `--queries` queries with K
   candidates each from precomputed item features, through `slow_score_matrix` as the serving re-ranker
   does; every query has its own candidates (no sharing between queries). Also one query alone. On CUDA
   in fp32 and under bfloat16 autocast.
3. Exact top-10 search over `--vectors` (1,000,000) unit vectors of dim 256: `--search-queries` (1,024)
   queries @ gallery.T then topk, in chunks of the gallery; float16 and float32 on CUDA, float32 on CPU.
   Queries are noisy copies of gallery rows; the first 16 queries' top-1 and top-10 scores are checked
   against numpy float32 brute force (`exact_check`; a failed check exits 1, after writing the figures).

Timings: warm-up calls first, then the mean over `--iters` calls, with torch.cuda.synchronize around them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from fastslow.env import apply_local_safety_env
from fastslow.log import get_logger

log = get_logger("fastslow.benchmarks.gpu")

KS = (20, 50, 100)
DIM = 256
TOPK = 10
CHECKED_QUERIES = 16  # queries whose top-k numpy recomputes over the whole gallery
QUERY_NOISE = 0.02  # per-dimension noise on a query's gallery row: cosine ~0.95 to it, ~0.35 at most to others
SCORE_ATOL = {"float16": 2e-3, "float32": 1e-5}  # a top-k score against numpy's float32 (fp16: its rounding)
SCORE_BUDGET = {"cuda": 2 << 30, "cpu": 256 << 20}  # bytes of one (queries, chunk) score block
# (full, quick) defaults of the options that --quick shrinks; an option given explicitly wins.
SIZES = {"batch": (256, 8), "queries": (None, 2), "vectors": (1_000_000, 20_000), "search_queries": (1024, 64),
         "warmup": (5, 1), "iters": (20, 2), "chunk": (None, 8192)}
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


def sig(x: float) -> float:
    """Four significant figures (a small positive figure stays positive)."""
    return float(f"{x:.4g}")


def sync(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, iters: int) -> float:
    """Mean seconds per call of `fn` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def precisions(device) -> list[str]:
    """The precisions timed: bfloat16 autocast and fp32 on CUDA, fp32 on CPU."""
    return ["bf16", "fp32"] if device.type == "cuda" else ["fp32"]


def autocast(device, precision: str):
    """The autocast context of a precision (none for fp32)."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
            "output_vocab": len(model.config.output_vocab), "rows": rows}


def topk_chunked(q, gallery, k: int, chunk: int):
    """Exact top-k (values, indices) of q @ gallery.T, a block of `chunk` gallery rows at a time."""
    import torch

    vals, idx = [], []
    for start in range(0, len(gallery), chunk):
        block = gallery[start : start + chunk]
        v, i = (q @ block.T).topk(min(k, len(block)), dim=1)
        vals.append(v)
        idx.append(i + start)
    if len(vals) == 1:
        return vals[0], idx[0]
    v, j = torch.cat(vals, dim=1).topk(min(k, len(gallery)), dim=1)
    return v, torch.cat(idx, dim=1).gather(1, j)


def bench_search(device, vectors: int, n_queries: int, warmup: int, iters: int, chunk: int | None = None) -> dict:
    """Queries/s of exact top-k over `vectors` unit vectors, checked against numpy on the first queries."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    gen = torch.Generator(device=device).manual_seed(0)
    gallery = F.normalize(torch.randn(vectors, DIM, device=device, generator=gen), dim=1)
    target = torch.randint(0, vectors, (n_queries,), device=device, generator=gen)
    queries = F.normalize(gallery[target] + QUERY_NOISE * torch.randn(n_queries, DIM, device=device, generator=gen),
                          dim=1)
    # The reference: numpy float32 brute force over the whole gallery for the first queries.
    checked, k = min(CHECKED_QUERIES, n_queries), min(TOPK, vectors)
    q_np = queries[:checked].cpu().numpy()
    ref_s, ref_i = [], []
    for start in range(0, vectors, 1 << 18):
        s = q_np @ gallery[start : start + (1 << 18)].cpu().numpy().T
        i = np.argpartition(-s, min(k, s.shape[1]) - 1, axis=1)[:, :k]
        ref_s.append(np.take_along_axis(s, i, axis=1))
        ref_i.append(i + start)
    ref_s, ref_i = np.concatenate(ref_s, axis=1), np.concatenate(ref_i, axis=1)
    order = np.argsort(-ref_s, axis=1)[:, :k]
    ref_s, best_i = np.take_along_axis(ref_s, order, axis=1), np.take_along_axis(ref_i, order, axis=1)[:, 0]
    dtypes = [torch.float16, torch.float32] if device.type == "cuda" else [torch.float32]
    rows, exact = [], True
    for dtype in dtypes:
        g, q, name = gallery.to(dtype), queries.to(dtype), str(dtype).split(".")[-1]
        rows_per = min(vectors, chunk or max(1, SCORE_BUDGET[device.type] // (n_queries * g.element_size())))
        with torch.inference_mode():
            s = timed(lambda: topk_chunked(q, g, TOPK, rows_per), device, warmup, iters)
            vals, idx = topk_chunked(q, g, TOPK, rows_per)
        top1 = bool((idx[:checked, 0].cpu().numpy() == best_i).all())
        # The top-k by score, not by index: rounding may swap near-ties (float16 surely), not change the scores.
        topk = bool(np.allclose(vals[:checked].float().cpu().numpy(), ref_s, atol=SCORE_ATOL[name]))
        exact &= top1 and topk
        rows.append({"dtype": name, "chunk": rows_per, "queries_per_s": sig(n_queries / s),
                     "ms_per_batch": sig(1000 * s), "top1_matches_numpy": top1, "topk_scores_match_numpy": topk})
        log.info("search: %s", rows[-1])
        del g
    return {"vectors": vectors, "dim": DIM, "queries": n_queries, "topk": TOPK, "checked_queries": checked,
            "top1_is_source_row": bool((best_i == target[:checked].cpu().numpy()).all()),
            "exact_check": exact, "rows": rows}


def device_name(device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "cpu"


def markdown(r: dict) -> str:
    """The figures as a short Markdown report."""
    lines = [f"# GPU benchmark: {r['device_name']} ({r['device']}, torch {r['torch']})", ""]
    if "embedding" in r:
        lines += [f"Image embedding, batch {r['embedding']['batch']}:", "",
                  "| model | px | precision | images/s | ms/batch |", "|---|---|---|---|---|"]
        lines += [f"| {x['model']} | {x['image_size']} | {x['precision']} | {x['images_per_s']} | {x['ms_per_batch']} |"
                  for x in r["embedding"]["rows"]] + [""]
    if "slow_rerank" in r:
        s = r["slow_rerank"]
        lines += [f"Slow re-ranking, {s['queries']} queries per call:", "",
                  "| K | precision | pairs/s | ms/query | ms, one query alone |", "|---|---|---|---|---|"]
        lines += [f"| {x['k']} | {x['precision']} | {x['pairs_per_s']} | {x['ms_per_query']} | {x['single_query_ms']} |"
                  for x in s["rows"]] + [""]
    if "exact_search" in r:
        e = r["exact_search"]
        lines += [f"Exact top-{e['topk']} over {e['vectors']:,} vectors of dim {e['dim']}, {e['queries']} queries "
                  f"per call (checked against numpy: {e['exact_check']}):", "",
                  "| dtype | queries/s | ms/batch |", "|---|---|---|"]
        lines += [f"| {x['dtype']} | {x['queries_per_s']} | {x['ms_per_batch']} |" for x in e["rows"]] + [""]
    return "\n".join(lines)


def parse_args(argv=None):
    """Options; those --quick shrinks default to its sizes when not given."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="result JSON (a .md goes beside it)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda when available")
    p.add_argument("--quick", action="store_true", help="small sizes and few iterations: a CPU smoke run")
    p.add_argument("--sections", default="embedding,slow,search", help="comma-separated subset")
    p.add_argument("--batch", type=int, help="images per embedding call (256; quick 8)")
    p.add_argument("--ks", default=",".join(map(str, KS)), help="Slow candidates per query")
    p.add_argument("--queries", type=int, help="queries per Slow call (16 on cuda, 4 on cpu; quick 2)")
    p.add_argument("--vectors", type=int, help="gallery vectors of the exact search (1,000,000; quick 20,000)")
    p.add_argument("--search-queries", type=int, help="queries per search call (1024; quick 64)")
    p.add_argument("--chunk", type=int, help="gallery rows per score block (default: a 2 GiB block on cuda, "
                   "256 MiB on cpu; quick 8192, so the merge of blocks is exercised)")
    p.add_argument("--warmup", type=int, help="untimed calls first (5; quick 1)")
    p.add_argument("--iters", type=int, help="timed calls (20; quick 2)")
    a = p.parse_args(argv)
    for name, (full, quick) in SIZES.items():
        if getattr(a, name) is None:
            setattr(a, name, quick if a.quick else full)
    return a


def main(argv=None) -> int:
    """Run the sections asked for; write the JSON and the .md beside it."""
    apply_local_safety_env()  # before transformers is imported: no hub
    a = parse_args(argv)
    from fastslow.log import setup_logging

    setup_logging("INFO")
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    device = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its convolution kernels once
    queries = a.queries or (16 if device.type == "cuda" else 4)
    sections = set(a.sections.split(","))
    started = time.time()
    result = {"device": device.type, "device_name": device_name(device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "threads": torch.get_num_threads(), "quick": a.quick,
              # fp32 rows: "highest" keeps matmuls out of TF32; cuDNN's convolutions may use it unless turned off.
              "float32_matmul_precision": torch.get_float32_matmul_precision(),
              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark,
              "warmup": a.warmup, "iters": a.iters}
    log.info("device %s (%s), torch %s", device, result["device_name"], torch.__version__)
    if "embedding" in sections:
        result["embedding"] = bench_embedding(device, a.batch, a.warmup, a.iters)
    if "slow" in sections:
        result["slow_rerank"] = bench_slow(device, queries, [int(k) for k in a.ks.split(",")], a.warmup, a.iters)
    if "search" in sections:
        result["exact_search"] = bench_search(device, a.vectors, a.search_queries, a.warmup, a.iters, a.chunk)
    result["seconds"] = round(time.time() - started, 1)
    result["ray_imported"] = "ray" in sys.modules  # must stay False: this runs where Ray is not installed
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    # A wrong search result fails the run (the figures are still written, for a look).
    return 0 if result.get("exact_search", {}).get("exact_check", True) else 1


if __name__ == "__main__":
    sys.exit(main())
