"""`python -m benchmarks.million --quick` through its real entry point: versions assembled by the build's own
path on a local Ray, searched as replicas search, with figures that hold together."""

import pytest

from helpers import quick_benchmark


@pytest.mark.integration  # starts a local Ray per build
@pytest.mark.timeout(600)
def test_the_quick_run_builds_each_version_and_measures_recall_latency_and_memory(tmp_path):
    result, out = quick_benchmark("million", tmp_path)
    assert result["items"] == 20_000 and result["dim"] == 256
    rows = {r["factory"]: r for r in result["rows"]}
    assert set(rows) == {"Flat", "HNSW32"} and all(r["shards"] == 2 for r in rows.values())
    assert rows["Flat"]["recall_at_10"] == 1.0  # exact search finds the exact top 10
    hnsw = rows["HNSW32"]
    # The efSearch chosen at build reaches the target on the build's own queries, and about it on held-out ones.
    assert hnsw["search"]["ef_search"] >= 16 and hnsw["search"]["recall_at_10"] >= 0.95
    assert hnsw["recall_at_10"] >= 0.9
    for r in rows.values():
        assert r["bytes_per_shard"] > 20_000 * 256 * 4 / 2  # at least the shard's raw vectors
        assert 0 < r["p50_ms_parallel"] <= r["p50_ms_serial"] and r["p50_ms_parallel"] <= r["p99_ms_parallel"]
        assert r["driver_peak_mb"] > 0 and 0 < r["replica_peak_mb"] < r["driver_peak_mb"] * 4
    md = out.with_suffix(".md").read_text()
    assert "| HNSW32 | 2 |" in md and "ef_search" in md
    assert out.with_suffix(".png").stat().st_size > 1000
