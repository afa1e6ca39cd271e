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

4. Pretrained models at their real sizes (the transformers config defaults) with random weights, no download
   (benchmarks/gpu_pretrained.py): CLIP ViT-B/32 and SigLIP base/16-224 image embedding, images/s at `--batch`
   through PretrainedFastModel.encode_visual (uint8 in, preprocessing included); BLIP base re-ranking one query's
   K = 20, 50, 100 candidates with the caption head (and K = 20 with the itm head), pairs/s and ms per query
   through `slow_score_matrix`, the candidates' vision states computed once beforehand (the item cache warm: the
   vision encoder is not timed). Each model is saved as a transformers folder and goes through fastslow's own
   checkpoint builders and loaders, as `fastslow pretrained` and indexing / the re-ranker run them. `--quick`
   builds tiny configs of the same families along the same path. On CUDA under bfloat16 autocast and in fp32.

Timings: warm-up calls first, then the mean over `--iters` calls, with torch.cuda.synchronize around them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.gpu_models import WORDS, bench_embedding, bench_slow, captions, fast_config
from benchmarks.gpu_pretrained import bench_pretrained, real_sizes
from benchmarks.gpu_search import (
    CHECKED_QUERIES,
    DIM,
    QUERY_NOISE,
    SCORE_ATOL,
    SCORE_BUDGET,
    TOPK,
    bench_search,
    topk_chunked,
)
from benchmarks.gpu_timing import autocast, device_name, precisions, sig, sync, timed
from fastslow.env import apply_local_safety_env
from fastslow.log import get_logger

__all__ = [
    "CHECKED_QUERIES", "DIM", "KS", "QUERY_NOISE", "SCORE_ATOL", "SCORE_BUDGET", "SIZES", "TOPK", "WORDS",
    "autocast", "bench_embedding", "bench_pretrained", "bench_search", "bench_slow", "captions", "device_name", "fast_config",
    "main", "markdown", "parse_args", "precisions", "real_sizes", "sig", "sync", "timed", "topk_chunked",
]

log = get_logger("fastslow.benchmarks.gpu")

KS = (20, 50, 100)
# (full, quick) defaults of the options that --quick shrinks; an option given explicitly wins.
SIZES = {"batch": (256, 8), "queries": (None, 2), "vectors": (1_000_000, 20_000), "search_queries": (1024, 64),
         "warmup": (5, 1), "iters": (20, 2), "chunk": (None, 8192)}


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
    if "pretrained" in r:
        lines += _pretrained_markdown(r["pretrained"])
    return "\n".join(lines)


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _pretrained_markdown(p: dict) -> list[str]:
    e, s = p["embedding"], p["rerank"]
    lines = [f"Pretrained models, {p['sizes']}, {p['weights']}; built as `fastslow pretrained` builds them and "
             f"loaded as indexing and the re-ranker load them. Image embedding through "
             f"PretrainedFastModel.encode_visual (uint8 in, preprocessing included), batch {e['batch']}:", "",
             "| model | px | vision params | precision | images/s | ms/batch |", "|---|---|---|---|---|---|"]
    lines += [f"| {x['model']} | {x['image_size']} | {_millions(x['vision_params'])} | {x['precision']} | "
              f"{x['images_per_s']} | {x['ms_per_batch']} |" for x in e["rows"]]
    lines += ["", f"BLIP re-ranking, {s['timed']}:", "",
              "| model | head | params | K | precision | pairs/s | ms/query |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {x['model']} | {x['head']} | {_millions(s['models'][x['head']]['params'])} | {x['k']} | "
              f"{x['precision']} | {x['pairs_per_s']} | {x['ms_per_query']} |" for x in s["rows"]]
    return lines + [""]


def parse_args(argv=None):
    """Options; those --quick shrinks default to its sizes when not given."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="result JSON (a .md goes beside it)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda when available")
    p.add_argument("--quick", action="store_true", help="small sizes and few iterations: a CPU smoke run")
    p.add_argument("--sections", default="embedding,slow,search,pretrained", help="comma-separated subset")
    p.add_argument("--batch", type=int, help="images per embedding call (256; quick 8)")
    p.add_argument("--ks", default=",".join(map(str, KS)), help="Slow and BLIP candidates per query")
    p.add_argument("--no-itm", action="store_true", help="pretrained: skip BLIP's itm head (at the smallest K)")
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
    if "pretrained" in sections:
        result["pretrained"] = bench_pretrained(device, a.batch, [int(k) for k in a.ks.split(",")], a.warmup, a.iters,
                                                a.quick, itm=not a.no_itm)
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
