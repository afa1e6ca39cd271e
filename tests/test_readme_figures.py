"""benchmarks/readme_figures.py: the README's figures are rendered from the benchmark table's JSON, and --check
fails while they differ."""

import json
import re
import shutil
from pathlib import Path

import pytest

from benchmarks import readme_figures
from benchmarks.paper_table import parse_args

README = Path(__file__).resolve().parents[1] / "README.md"
TIMING = {"latency_queries": 64, "throughput_queries": 500, "batch": 64, "repeats": 3, "device": "cpu",
          "torch_threads": 2}


def result(modality, method, k, r1, latency=None, qps=None, same=None, gallery=500, **extra):
    row = {"modality": modality, "method": method, "k": k, "r1": r1, "r5": min(100.0, r1 + 20),
           "r10": min(100.0, r1 + 30), "median_rank": 1.0, "queries": gallery * 5 if method != "slow" else gallery, "gallery": gallery, **extra}
    if latency is not None:
        row.update(latency_ms=latency, queries_per_s=qps)
    if same is not None:
        row["same_queries"] = {"r1": same, "r5": 99.0, "r10": 100.0, "median_rank": 1.0}
    return row


def table(size="quick", split="test", fast_r1=63.7, distilled_r1=69.8) -> dict:
    """A table as paper_table writes it: images meet the paper's claims unless told otherwise; videos' Fast
    then Slow at K=20 is 3 R@1 under Slow."""
    rows = []
    for modality, slow_r1, reranked_same in (("image", 97.8, 97.0), ("video", 92.4, 89.4)):
        rows += [result(modality, "chance", None, 0.2),
                 result(modality, "fast", None, fast_r1, 1.25, 3120.0, same=fast_r1 + 0.3),
                 result(modality, "slow", None, slow_r1, 150.0, 9.6),
                 result(modality, "fast+slow", 20, 96.6, 12.0, 410.0, same=reranked_same, speedup_latency=12.5,
                        speedup_throughput=42.71)]
        if modality == "image":
            rows.append(result(modality, "fast_soft_targets", None, 62.2, 1.3, 3000.0, same=62.0))
        rows += [result(modality, "fast_distilled", None, distilled_r1 if modality == "image" else 49.5, 1.3, 3050.0,
                        same=70.0)]
    return {"size": size, "split": split, "seed": 0, "overrides": [], "timing": {"image": TIMING, "video": TIMING},
            "notes": [], "rows": rows}


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def outside_blocks(text: str) -> str:
    return re.sub(r"<!-- figures:(\w+):begin -->.*?<!-- figures:\1:end -->", "", text, flags=re.S)


def test_check_fails_until_the_readme_holds_the_tables_figures(tmp_path, capsys):
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)  # the real README: its markers are where the generated figures go
    quick, full = write(tmp_path / "quick.json", table()), write(tmp_path / "full.json", table("full", fast_r1=57.0))
    args = [str(quick), str(full), "--readme", str(readme)]
    assert readme_figures.main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert "figures differ from" in err and "(3 block(s))" in err and "python -m benchmarks.readme_figures" in err
    assert readme.read_text() == README.read_text()  # --check writes nothing

    assert readme_figures.main(args) == 0
    text = readme.read_text()
    assert outside_blocks(text) == outside_blocks(README.read_text())
    assert readme_figures.main([*args, "--check"]) == 0
    # The opening paragraph and both tables carry the JSON's figures, with the like-for-like speed-ups.
    summary = " ".join(text.split("<!-- figures:summary:begin -->")[1].split("<!-- figures:summary:end -->")[0].split())
    assert "first for 63.7% of captions in 1.25 ms per query" in summary and "gets 97.8%" in summary
    quick_block = text.split("<!-- figures:quick:begin -->")[1].split("<!-- figures:quick:end -->")[0]
    assert "| image | fast |  | 63.7 (64.0*) | 83.7 | 93.7 | 1.25 | 3,120 |" in quick_block
    assert "| image | slow (all 500) |  | 97.8 | 100.0 | 100.0 | 150 | 9.60 |" in quick_block
    assert ("- images: 12.5x faster for one query (12.0 vs 150 ms), 42.7x the throughput (410 vs 9.60 queries/s)"
            in " ".join(quick_block.split()))
    assert "| image | fast |  | 57.0 (57.3*) |" in text.split("<!-- figures:full:begin -->")[1]

    # A figure that changes in the JSON, or one edited by hand in the README, fails the check again.
    write(quick, table(fast_r1=60.0))
    assert readme_figures.main([*args, "--check"]) == 1
    assert "-| image | fast |  | 63.7 (64.0*)" in capsys.readouterr().err
    readme_figures.main(args)
    readme.write_text(readme.read_text().replace("| 60.0 (60.3*) |", "| 61.0 (60.3*) |", 1))
    assert readme_figures.main([*args, "--check"]) == 1


def test_the_papers_claims_are_checked_on_the_run():
    lines = "\n".join(readme_figures.claims(table(distilled_r1=65.0)))
    assert "- images, Slow >= Fast + 10 R@1: 97.8 vs 64.0 (+33.8): holds." in lines
    assert "- images, Fast then Slow at K=20 within 2 R@1 of Slow: 97.0 vs 97.8 (-0.8): holds." in lines
    assert "- videos, Fast then Slow at K=20 within 2 R@1 of Slow: 89.4 vs 92.4 (-3.0): does not hold." in lines
    assert "- images, distilled Fast >= Fast + 3 R@1: 65.0 vs 63.7 (+1.3): does not hold." in lines


def test_only_the_test_tables_of_the_tables_settings_reach_the_readme(tmp_path, capsys):
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    val = write(tmp_path / "val.json", table(split="val"))
    assert readme_figures.main([str(val), "--readme", str(readme)]) == 2
    assert "a run on val" in capsys.readouterr().err
    tuned = write(tmp_path / "tuned.json", {**table(), "overrides": ["uncaptioned=10"]})
    assert readme_figures.main([str(tuned), "--readme", str(readme)]) == 2
    tiny = write(tmp_path / "tiny.json", table("tiny"))
    assert readme_figures.main([str(tiny), "--readme", str(readme)]) == 2
    assert "a tiny table; the README quotes the quick and full tables only" in capsys.readouterr().err
    readme.write_text(README.read_text().replace("<!-- figures:full:end -->", ""))
    full = write(tmp_path / "full.json", table("full"))
    assert readme_figures.main([str(full), "--readme", str(readme)]) == 2
    assert "expected one <!-- figures:full:begin --> line followed by one <!-- figures:full:end -->" in \
        capsys.readouterr().err
    assert readme.read_text() == README.read_text().replace("<!-- figures:full:end -->", "")


def test_paper_table_rewrites_the_readme_only_after_a_test_run_with_the_tables_settings(capsys):
    assert parse_args(["--out", "o.json", "--quick", "--update-readme"]).update_readme == "README.md"
    for refused in (["--tiny"], ["--quick", "--split", "val"], ["--quick", "--override", "uncaptioned=10"]):
        with pytest.raises(SystemExit):
            parse_args(["--out", "o.json", "--update-readme", *refused])
        assert "the README quotes the quick and full tables on test" in capsys.readouterr().err


def test_a_run_that_rewrites_the_readme_is_kept_beside_it(tmp_path):
    readme, out = tmp_path / "repo" / "README.md", tmp_path / "out" / "full.json"
    readme.parent.mkdir(), out.parent.mkdir()
    write(out, table("full"))
    out.with_suffix(".md").write_text("| table |")
    out.with_suffix(".png").write_bytes(b"\x89PNG plot")
    kept = readme_figures.keep_table(out, readme)
    assert kept == [readme.parent / "benchmarks/tables/full.json", readme.parent / "benchmarks/tables/full.md",
                    readme.parent / "docs/table_full.png"]
    assert [p.read_bytes() for p in kept] == [out.read_bytes(), b"| table |", b"\x89PNG plot"]
    with pytest.raises(readme_figures.FastslowError, match="a run on val"):
        readme_figures.keep_table(write(out, table("full", split="val")), readme)
    assert json.loads(kept[0].read_text())["split"] == "test"  # a refused run replaces nothing
    kept[0].with_suffix(".png").write_bytes(b"\x89PNG plot")  # a run written where it is kept stays
    assert readme_figures.keep_table(kept[0], readme) == kept and kept[1].read_bytes() == b"| table |"


def test_the_readmes_figures_are_those_of_the_kept_test_tables():
    """The quick and full tables run on test are kept in benchmarks/tables/ (out/ is not in git); the README's
    generated blocks must be what they render, so a hand edit of a figure fails here."""
    tables = README.parent / "benchmarks" / "tables"
    paths = [tables / "quick.json", tables / "full.json"]
    for path in paths:
        data = json.loads(path.read_text())
        assert (data["split"], data["overrides"]) == ("test", []), path
    assert readme_figures.main([*map(str, paths), "--readme", str(README), "--check"]) == 0
