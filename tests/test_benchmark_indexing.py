"""`python -m benchmarks.indexing --quick` through its real entry point (its own local Ray, the index job):
every item indexed, the rates consistent with the bound it states."""

import pytest

from helpers import quick_benchmark


@pytest.mark.integration  # runs python -m benchmarks.indexing, which starts a local Ray
@pytest.mark.timeout(600)
def test_the_quick_run_indexes_every_item_and_reports_its_ratio_to_the_bound(tmp_path):
    result, out = quick_benchmark("indexing", tmp_path)
    assert [r["media"] for r in result["rows"]] == ["image", "video"]
    for row in result["rows"]:
        assert row["items"] == {"image": 24, "video": 4}[row["media"]]
        assert row["indexed"] == row["items"] and row["errors"] == 0  # every generated item is media
        d, e = row["decode_per_s"], row["encode_per_s"]
        assert d > 0 and e > 0
        assert row["bound_per_s"] == pytest.approx(1 / (1 / d + 1 / e), rel=0.01)  # the stated bound
        assert row["ratio_to_bound"] == pytest.approx(row["end_to_end_per_s"] / row["bound_per_s"], rel=0.01)
        assert row["end_to_end_per_s"] == pytest.approx(row["items"] / row["end_to_end_seconds"], rel=0.05)
        # The stricter bound, with E from one single-threaded process per core.
        e_procs = row["encode_processes_per_s"]
        assert e_procs > 0
        assert row["bound_processes_per_s"] == pytest.approx(1 / (1 / d + 1 / e_procs), rel=0.01)
        assert row["ratio_to_bound_processes"] == pytest.approx(
            row["end_to_end_per_s"] / row["bound_processes_per_s"], rel=0.01)
        assert row["fixed_seconds"] == pytest.approx(row["end_to_end_seconds"] - row["items"] / row["bound_per_s"],
                                                     rel=0.02, abs=0.05)
    md = out.with_suffix(".md").read_text()
    assert "| image | 24 |" in md and "end to end / bound" in md and "a process per core" in md
    assert result["actors"] == 2  # embed.concurrency auto: one actor per CPU of the local Ray
    assert out.with_suffix(".png").stat().st_size > 1000
