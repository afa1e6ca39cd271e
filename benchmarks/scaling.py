"""The paper's curve: ms per query and R@1 against the collection size N, for Fast alone, Fast then Slow at K and
Slow over everything.

    python -m benchmarks.scaling --out out/scaling.json        (also writes .md and .png beside it)

Models: the benchmark table's image Fast and Slow (configs/benchmark/table.yaml, quick size), trained on the quick
synthetic benchmark or reused from `--work` (data/bench-models, shared with `benchmarks.paper_table`). Queries:
every caption of the validation split's images (the test split is the table's alone). The gallery of size N is
those images plus N - 200 distractors (`benchmarks/scaling_gallery.py`: rendered scenes of other groups, and past
`--rendered` generated vectors around them).

Per N:
- R@1 of Fast (exact dot product over the N items) and of Fast then Slow (Slow re-scores Fast's top K) on every
  query; of Slow over everything on each item's first caption (Q x N decoder passes), where N <= --slow-ranked-max,
  with Fast's and Fast then Slow's R@1 on those same queries beside it (`r1_same_queries`).
- ms per query at batch 1, the median over --latency-queries queries answered alone: Fast encodes the text and
  searches an exact FAISS index (IndexFlatIP) of the N vectors; Fast then Slow adds Slow's decoder over the top K
  (the keys and values of those K computed in the call, as the serving re-ranker does); Slow over everything runs its
  decoder over all N items, timed up to --slow-timed-max items and beyond that computed from its measured cost per
  item (`extrapolated`, drawn dashed). torch has --cpus threads, FAISS one (as a shard replica).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from fastslow.env import apply_local_safety_env

SIZES = "1000,3000,10000,30000,100000,300000,1000000"
QUICK_SIZES = "20,50,200,1000"
METHODS = ("fast", "fast+slow", "slow")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="result JSON (the .md and .png go beside it)")
    p.add_argument("--quick", action="store_true",
                   help="a test-sized run: the table's tiny random models, N up to 1,000 (a minute)")
    p.add_argument("--data", help="the synthetic benchmark (made if missing; default data/bench-quick-seed0, "
                                  "--quick: data/bench-tiny-seed0)")
    p.add_argument("--work", default="data/bench-models",
                   help="trained models, kept and reused (shared with benchmarks.paper_table; default %(default)s)")
    p.add_argument("--sizes", help=f"collection sizes N (default {SIZES}; --quick {QUICK_SIZES})")
    p.add_argument("--k", type=int, default=20, help="candidates Slow re-ranks (default %(default)s)")
    p.add_argument("--rendered", type=int, help="distractor scenes rendered and embedded; the rest of the largest "
                                                "gallery is generated around them (default 10000; --quick 200)")
    p.add_argument("--slow-ranked-max", type=int, help="largest N whose Slow-over-everything R@1 is measured "
                                                       "(default 3000; --quick 200)")
    p.add_argument("--slow-timed-max", type=int, help="largest N whose Slow-over-everything latency is measured; "
                                                      "beyond it extrapolated (default 10000; --quick 1000)")
    p.add_argument("--latency-queries", type=int, default=30, help="queries timed one at a time (Fast, Fast then "
                                                                   "Slow; Slow over everything: a fifth)")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="torch threads (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    quick = a.quick
    a.size = "tiny" if quick else "quick"
    a.data = a.data or f"data/bench-{a.size}-seed{a.seed}"
    a.sizes = sorted({int(x) for x in (a.sizes or (QUICK_SIZES if quick else SIZES)).split(",")})
    a.rendered = a.rendered if a.rendered is not None else (200 if quick else 10_000)
    a.slow_ranked_max = a.slow_ranked_max if a.slow_ranked_max is not None else (200 if quick else 3000)
    a.slow_timed_max = a.slow_timed_max if a.slow_timed_max is not None else (1000 if quick else 10_000)
    if a.k < 1 or a.latency_queries < 1 or a.cpus < 1 or a.rendered < 1:
        p.error("--k, --latency-queries, --cpus and --rendered must be at least 1")
    return a


def load_models(a: argparse.Namespace):
    """The table's image Fast and Slow (trained now or reused from --work), the validation split and the synthetic
    benchmark's settings."""
    from benchmarks.table_runner import prepare_run, table_data
    from benchmarks.table_spec import table_spec

    spec = table_spec(a.size)
    synth = table_data(spec, a.size, a.seed, Path(a.data), not a.no_progress)
    run = prepare_run(spec, a.seed, Path(a.data), "image", "val", not a.no_progress, Path(a.work), retrain=False)
    fast, _ = run.cache.model("fast", run.fresh_fast, run.depends["fast"])
    slow, _ = run.cache.model("slow", run.fresh_slow, run.depends["slow"])
    return fast.eval(), slow.eval(), run.evaluation, synth


def measure(a: argparse.Namespace) -> dict:
    import faiss
    import torch

    from benchmarks.scaling_gallery import build_gallery, fast_ranks_and_top
    from benchmarks.table_timing import latency_ms, spread
    from fastslow.errors import FastslowError
    from fastslow.eval import metrics_from_ranks, ranks_of_true
    from fastslow.inference.slow_scores import slow_score_matrix
    from fastslow.log import get_logger
    from fastslow.rerank import rerank, reranked_ranks

    log = get_logger("fastslow.benchmarks.scaling")
    torch.set_num_threads(a.cpus)
    # One FAISS thread, as each shard replica has: a single query's search over 2 threads took 4 times as long here.
    faiss.omp_set_num_threads(1)
    fast, slow, val, synth = load_models(a)
    texts, true_index = val.caption_pairs()
    first = np.searchsorted(true_index, np.arange(len(val)))  # each item's first caption: Slow's queries
    sizes = [n for n in a.sizes if n >= len(val)]
    if not sizes:
        raise FastslowError(f"--sizes: every size is below the {len(val)} validation items the gallery starts with")
    t0 = time.perf_counter()
    g = build_gallery(fast, slow, val.pixels, synth, sizes[-1], a.rendered, a.seed, not a.no_progress)
    log.info("gallery of %d (%d rendered, %d generated) in %.0f s", len(g.vectors), g.rendered, g.generated,
             time.perf_counter() - t0)
    with torch.inference_mode():
        queries = torch.cat([fast.encode_text(texts[i : i + 256]) for i in range(0, len(texts), 256)])
    timed = spread(texts, a.latency_queries)
    # Slow over everything needs every item's features: only the real (validation and rendered) items have their own.
    ranked_max, timed_max = min(a.slow_ranked_max, len(g.features)), min(a.slow_timed_max, len(g.features))
    index, rows, slow_timed = faiss.IndexFlatIP(g.vectors.shape[1]), [], None

    # How a query is answered, for `latency_ms` (which hands each a list of one text).
    def fast_search(texts: list[str], k: int = 10):
        with torch.inference_mode():
            return index.search(fast.encode_text(texts).float().numpy(), k)

    def slow_ms(n: int) -> float:
        """Slow over the first n items for one query at a time (a fifth of the timed queries)."""
        everything = torch.arange(n)[None]
        return latency_ms(lambda one: slow_score_matrix(slow, g.features, one, everything),
                          timed[: max(1, a.latency_queries // 5)])

    def fast_then_slow(texts: list[str]):
        scores, found = fast_search(texts, a.k)
        return rerank(found, scores, slow_score_matrix(slow, g.features, texts,
                                                       torch.from_numpy(g.feature_row[found])), 10)

    for n in sizes:
        index.add(g.vectors[index.ntotal : n].float().numpy())  # the gallery grows: add the new items
        fast_ranks, _, top = fast_ranks_and_top(queries, g.vectors[:n], true_index, a.k)
        slow_top = slow_score_matrix(slow, g.features, texts, torch.from_numpy(g.feature_row[top]))
        both_ranks = reranked_ranks(fast_ranks, true_index, top, slow_top)
        point = {"n": n, "generated": max(0, n - len(val) - g.rendered)}
        fast_row = {**point, "method": "fast", "r1": metrics_from_ranks(fast_ranks)["r1"],
                    "latency_ms": latency_ms(fast_search, timed)}
        both_row = {**point, "method": "fast+slow", "k": a.k, "r1": metrics_from_ranks(both_ranks)["r1"],
                    "latency_ms": latency_ms(fast_then_slow, timed)}
        slow_row = {**point, "method": "slow", "r1": None, "extrapolated": n > timed_max}
        if n <= ranked_max:
            every = torch.arange(n).expand(len(first), n)
            ranks = ranks_of_true(slow_score_matrix(slow, g.features, [texts[i] for i in first], every,
                                                    progress=not a.no_progress), true_index[first])
            slow_row["r1"] = metrics_from_ranks(ranks)["r1"]
            fast_row["r1_same_queries"] = metrics_from_ranks(fast_ranks[first])["r1"]
            both_row["r1_same_queries"] = metrics_from_ranks(both_ranks[first])["r1"]
        if n <= timed_max:
            slow_timed = (n, slow_ms(n))
            slow_row["latency_ms"] = slow_timed[1]
        else:  # Slow's cost grows with N: its measured cost per item (at the largest N it was timed at) times N
            slow_timed = slow_timed or (timed_max, slow_ms(timed_max))
            slow_row["latency_ms"] = slow_timed[1] * n / slow_timed[0]
        for r in (fast_row, both_row, slow_row):
            r["latency_ms"] = round(r["latency_ms"], 3)
            rows.append(r)
        log.info("N=%d: %s", n, "; ".join(f"{r['method']} R@1 {r['r1']} {r['latency_ms']} ms" for r in rows[-3:]))
    return {"rows": rows, "queries": len(texts), "slow_queries": len(first), "validation_items": len(val),
            "rendered": g.rendered, "generated": g.generated, "k": a.k, "slow_timed_max": slow_timed[0],
            "latency_queries": len(timed), "threads": a.cpus, "machine": f"{os.cpu_count()} CPUs",
            "fast_config": fast.config.vision.kind, "models_dir": a.work, "data": a.data}


def markdown(result: dict) -> str:
    lines = [f"# Scaling: ms per query (batch 1) and R@1 against N ({result['machine']}, {result['threads']} torch "
             "threads, 1 FAISS thread)",
             "", f"Queries: {result['queries']} validation captions (Slow over everything: "
             f"{result['slow_queries']}, each item's first; starred: the other methods on those). Gallery: "
             f"{result['validation_items']} validation images + distractors ({result['rendered']} rendered, up to "
             f"{result['generated']} generated). Slow over everything past N = {result['slow_timed_max']}: "
             "extrapolated from its measured cost per item (e).", "",
             "| N | Fast ms | Fast R@1 | Fast then Slow (K=%d) ms | R@1 | Slow over everything ms | R@1 |"
             % result["k"], "|---|---|---|---|---|---|---|"]
    by_n: dict[int, dict] = {}
    for r in result["rows"]:
        by_n.setdefault(r["n"], {})[r["method"]] = r

    def r1(r):
        if r["r1"] is None:
            return ""
        return f"{r['r1']:.1f}" + (f" ({r['r1_same_queries']:.1f}*)" if "r1_same_queries" in r else "")

    for n, m in sorted(by_n.items()):
        s = m["slow"]
        lines.append(f"| {n:,} | {m['fast']['latency_ms']:.1f} | {r1(m['fast'])} | {m['fast+slow']['latency_ms']:.1f}"
                     f" | {r1(m['fast+slow'])} | {s['latency_ms']:.0f}{' (e)' if s['extrapolated'] else ''}"
                     f" | {r1(s)} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, png: Path) -> None:
    from benchmarks.report import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"fast": "tab:blue", "fast+slow": "tab:green", "slow": "tab:red"}
    labels = {"fast": "Fast", "fast+slow": f"Fast then Slow (K={result['k']})", "slow": "Slow over everything"}
    for method in METHODS:
        rows = [r for r in result["rows"] if r["method"] == method]
        measured = [r for r in rows if not r.get("extrapolated")]
        left.plot([r["n"] for r in measured], [r["latency_ms"] for r in measured], "o-", color=colours[method],
                  label=labels[method])
        guessed = [r for r in rows if r.get("extrapolated")]
        if guessed:
            tail = measured[-1:] + guessed
            left.plot([r["n"] for r in tail], [r["latency_ms"] for r in tail], "o--", color=colours[method],
                      mfc="none", label=f"{labels[method]}, extrapolated")
        ranked = [r for r in rows if r["r1"] is not None]
        right.plot([r["n"] for r in ranked], [r["r1"] for r in ranked], "o-", color=colours[method],
                   label=labels[method])
    left.set(xscale="log", yscale="log", xlabel="collection size N", ylabel="ms per query (batch 1)")
    right.set(xscale="log", xlabel="collection size N", ylabel="R@1 (%)", ylim=(0, 100))
    for ax in (left, right):
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # decades only: minor labels overlap
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fast, Fast then Slow and Slow as the collection grows")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    apply_local_safety_env()
    a = parse_args(argv)
    from benchmarks.report import write_report
    from fastslow.errors import FastslowError
    from fastslow.log import setup_logging

    setup_logging("INFO")
    started = time.time()
    try:
        result = measure(a)
    except FastslowError as e:
        print(f"scaling: error: {e}", file=sys.stderr)
        return 2
    result["seconds"] = round(time.time() - started, 1)
    write_report(a.out, result, markdown, plot)
    print(f"wrote {a.out} and its .md and .png in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
