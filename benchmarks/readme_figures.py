"""The README's figures, rendered from the benchmark table's JSON (what `python -m benchmarks.paper_table` writes).

    python -m benchmarks.readme_figures benchmarks/tables/quick.json benchmarks/tables/full.json \
        [--readme README.md] [--check]

README.md holds one block per figure set between marker comments, each rendered from one JSON:
`<!-- figures:summary:begin -->` ... `<!-- figures:summary:end -->` the opening paragraph's figures (quick images),
`<!-- figures:quick:begin -->` ... `<!-- figures:quick:end -->` the quick table, its speed-ups and the paper's
claims, and `figures:full` the same for the full table. Without --check the blocks are rewritten and nothing else;
with --check nothing is written, and the exit status is 1 when a block differs from what its JSON renders.
`paper_table --update-readme` runs this after a quick or full run, and keeps that run (`keep_table`) where the
README's plots and its test read it: the JSON and table in benchmarks/tables/SIZE.json|.md, the plot in
docs/table_SIZE.png (out/ is not in git).
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import sys
import textwrap
from pathlib import Path

from fastslow.errors import FastslowError

BLOCKS = {"quick": ("summary", "quick"), "full": ("full",)}  # the blocks each size's JSON renders
LABELS = {"fast+slow": "fast then slow", "fast_distilled+slow": "fast distilled then slow",
          "fast_soft_targets": "fast soft targets", "fast_distilled": "fast distilled"}
RERANKED = ("fast+slow", "fast_distilled+slow")
SUMMARY_K = 20  # the K the opening paragraph and the claims quote
MODALITY = {"image": "images", "video": "videos"}
WIDTH = 84  # the README's line width


def wrap(text: str) -> str:
    """A paragraph, or a list item (indented under its dash), wrapped to the README's width."""
    return textwrap.fill(text, WIDTH, subsequent_indent="  " if text.startswith("- ") else "",
                         break_on_hyphens=False, break_long_words=False)


def load_table(path: Path) -> dict:
    """A quick or full table on the test split, as paper_table wrote it."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FastslowError(f"{path}: not a benchmark table's JSON ({e})") from None
    if not isinstance(table, dict) or not {"size", "split", "rows", "timing"} <= set(table):
        raise FastslowError(f"{path}: not a benchmark table's JSON (expected size, split, timing and rows)")
    if table["size"] not in BLOCKS:
        raise FastslowError(f"{path}: a {table['size']} table; the README quotes the quick and full tables only")
    if table["split"] != "test" or table.get("overrides"):
        raise FastslowError(f"{path}: a run on {table['split']} with overrides {table.get('overrides') or 'none'}; "
                            "the README quotes the test split with configs/benchmark/table.yaml's settings")
    return table


def number(x: float) -> str:
    """A timing to about three significant figures."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def find(table: dict, modality: str, method: str, k: int | None = None) -> dict:
    for row in table["rows"]:
        if (row["modality"], row["method"], row["k"]) == (modality, method, k):
            return row
    raise FastslowError(f"the {table['size']} table has no {modality} row {method}" + (f" at K={k}" if k else ""))


def table_block(table: dict) -> str:
    """The table of one run, what its timings cover, the speed-ups and the paper's claims checked on it."""
    timing = next(iter(table["timing"].values()))
    lines = [wrap(f"Seed {table['seed']}, the test split; R@k in %. Timings ({timing['device']}, "
                  f"{timing['torch_threads']} torch threads; noisy): latency is one query answered alone (batch 1), "
                  f"the median of {timing['latency_queries']} queries; queries/s answers "
                  f"{timing['throughput_queries']} queries in batches of {timing['batch']} (the median of "
                  f"{timing['repeats']} passes), every stage of every method batched alike."), "",
             "| modality | method | K | R@1 | R@5 | R@10 | latency ms (batch 1) | queries/s (batched) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table["rows"]:
        lines.append(table_row(row))
    lines += ["", "\\* R@1 on Slow's queries (each item's first caption), like for like with Slow over all.", ""]
    lines += [wrap(line) for line in speedups(table) + [""] + claims(table)]
    return "\n".join(lines)


def table_row(row: dict) -> str:
    method = LABELS.get(row["method"], row["method"])
    if row["method"] == "slow":
        method += f" (all {row['gallery']:,})"
    r1 = f"{row['r1']:.1f}"
    if "same_queries" in row and row["method"] != "chance":
        r1 += f" ({row['same_queries']['r1']:.1f}*)"
    timings = ["" if row.get(key) is None else number(row[key]) for key in ("latency_ms", "queries_per_s")]
    cells = [row["modality"], method, "" if row["k"] is None else str(row["k"]), r1, f"{row['r5']:.1f}",
             f"{row['r10']:.1f}", *timings]
    return "| " + " | ".join(cells) + " |"


def speedups(table: dict) -> list[str]:
    """Slow over all against Fast then Slow at SUMMARY_K, from the like-for-like figures of the table."""
    out = [f"Fast then Slow at K={SUMMARY_K} against Slow over all, from the figures above:"]
    for modality in modalities(table):
        slow, row = find(table, modality, "slow"), find(table, modality, "fast+slow", SUMMARY_K)
        out.append(f"- {MODALITY[modality]}: {row['speedup_latency']:.1f}x faster for one query "
                   f"({number(row['latency_ms'])} vs {number(slow['latency_ms'])} ms), "
                   f"{row['speedup_throughput']:.1f}x the throughput ({number(row['queries_per_s'])} vs "
                   f"{number(slow['queries_per_s'])} queries/s).")
    return out


def claims(table: dict) -> list[str]:
    """The paper's claims, each checked on this run (R@1 on Slow's queries where Slow is compared)."""
    out = ["The paper's claims on this run:"]
    for modality in modalities(table):
        fast, slow = find(table, modality, "fast"), find(table, modality, "slow")
        reranked = find(table, modality, "fast+slow", SUMMARY_K)
        gap = slow["r1"] - fast["same_queries"]["r1"]
        out.append(f"- {MODALITY[modality]}, Slow >= Fast + 10 R@1: {slow['r1']:.1f} vs "
                   f"{fast['same_queries']['r1']:.1f} ({gap:+.1f}): {verdict(gap >= 10)}.")
        change = reranked["same_queries"]["r1"] - slow["r1"]
        out.append(f"- {MODALITY[modality]}, Fast then Slow at K={SUMMARY_K} within 2 R@1 of Slow: "
                   f"{reranked['same_queries']['r1']:.1f} vs {slow['r1']:.1f} ({change:+.1f}): "
                   f"{verdict(change >= -2)}.")
        if modality == "image":
            student = find(table, "image", "fast_distilled")
            lift = student["r1"] - fast["r1"]
            out.append(f"- images, distilled Fast >= Fast + 3 R@1: {student['r1']:.1f} vs {fast['r1']:.1f} "
                       f"({lift:+.1f}): {verdict(lift >= 3)}.")
    return out


def verdict(holds: bool) -> str:
    return "holds" if holds else "does not hold"


def modalities(table: dict) -> list[str]:
    return list(dict.fromkeys(row["modality"] for row in table["rows"]))


def summary(table: dict) -> str:
    """The opening paragraph's figures: images of the quick table, one query at a time."""
    fast, slow = find(table, "image", "fast"), find(table, "image", "slow")
    reranked = find(table, "image", "fast+slow", SUMMARY_K)
    per_item = round(fast["queries"] / fast["gallery"])
    return wrap(f"Why both: on the synthetic benchmark below ({fast['gallery']:,} test images, {per_item} captions "
            f"each; CPU, one query at a time), Fast alone finds the right image first for {fast['r1']:.1f}% of captions in "
            f"{number(fast['latency_ms'])} ms per query; Slow over the whole gallery gets {slow['r1']:.1f}% (each "
            f"image's first caption; Fast {fast['same_queries']['r1']:.1f}% of those) but takes "
            f"{number(slow['latency_ms'])} ms per query, and grows with the collection; Fast's top {SUMMARY_K} "
            f"re-ranked by Slow gets {reranked['r1']:.1f}% ({reranked['same_queries']['r1']:.1f}% of Slow's captions) "
            f"in {number(reranked['latency_ms'])} ms, and stays at K Slow passes per query however large the "
            "collection.")


def rendered(table: dict) -> dict[str, str]:
    """The README blocks a table renders, by name."""
    render = {"summary": summary, "quick": table_block, "full": table_block}
    return {name: render[name](table) for name in BLOCKS[table["size"]]}


def replace_block(text: str, name: str, body: str, where: str) -> str:
    """`text` with the block `name` holding `body` (markers kept, nothing else touched)."""
    begin, end = f"<!-- figures:{name}:begin -->", f"<!-- figures:{name}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise FastslowError(f"{where}: expected one {begin} line followed by one {end} line")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{begin}\n{body}\n{end}{tail}"


def update_readme(readme: Path, tables: list[Path], check: bool = False) -> list[str]:
    """Render each table's blocks into `readme` (unless `check`); return the diffs of the blocks that differed."""
    text = original = readme.read_text()
    diffs = []
    for path in tables:
        for name, body in rendered(load_table(path)).items():
            new = replace_block(text, name, body, str(readme))
            if new != text:
                diff = difflib.unified_diff(text.splitlines(), new.splitlines(), f"{readme} (block {name})",
                                            f"rendered from {path}", lineterm="", n=0)
                diffs.append("\n".join(diff))
            text = new
    if not check and text != original:
        readme.write_text(text)
    return diffs


def keep_table(out: Path, readme: Path) -> list[Path]:
    """Copy a quick or full run on test (`out` and the .md and .png beside it) into the repository of `readme`."""
    size, root = load_table(out)["size"], readme.parent
    copies = [(out, root / "benchmarks" / "tables" / f"{size}.json"),
              (out.with_suffix(".md"), root / "benchmarks" / "tables" / f"{size}.md"),
              (out.with_suffix(".png"), root / "docs" / f"table_{size}.png")]
    for source, kept in copies:
        kept.parent.mkdir(parents=True, exist_ok=True)
        if not (kept.exists() and kept.samefile(source)):  # a run written straight into benchmarks/tables/
            shutil.copyfile(source, kept)
    return [kept for _, kept in copies]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.readme_figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="+", type=Path, help="JSON written by paper_table (quick and/or full, test split)")
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block differs from its JSON")
    args = p.parse_args(argv)
    try:
        diffs = update_readme(args.readme, args.tables, check=args.check)
    except (FastslowError, OSError) as e:
        print(f"readme_figures: error: {e}", file=sys.stderr)
        return 2
    if args.check and diffs:
        print("\n".join(diffs), file=sys.stderr)
        print(f"readme_figures: {args.readme}'s figures differ from {', '.join(map(str, args.tables))} "
              f"({len(diffs)} block(s)); rewrite them: python -m benchmarks.readme_figures "
              f"{' '.join(map(str, args.tables))}", file=sys.stderr)
        return 1
    print(f"{args.readme}: figures {'match' if args.check else 'written'} ({len(diffs)} block(s) changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
