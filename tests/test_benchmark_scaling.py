"""benchmarks.scaling: the chunked ranking against the whole-matrix one, distractors that cannot match, and the
quick run through its real entry point with figures that hold together."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import quick_benchmark


def test_chunked_ranks_and_top_k_equal_the_whole_matrix_ones():
    from benchmarks.scaling_gallery import fast_ranks_and_top
    from fastslow.eval import ranks_of_true
    from fastslow.rerank import fast_topk

    rng = np.random.default_rng(0)
    gallery = torch.from_numpy(rng.standard_normal((1000, 16)))
    gallery[500] = gallery[3]  # an exact tie with a true item counts against the query
    queries = torch.from_numpy(rng.standard_normal((40, 16)))
    true = rng.integers(0, 64, 40)
    true[0] = 3
    ranks, top_s, top_i = fast_ranks_and_top(queries, gallery, true, k=7, chunk=64)
    assert np.array_equal(ranks, ranks_of_true(queries @ gallery.T, true))
    want_s, want_i = fast_topk(queries, gallery, 7)
    assert np.allclose(top_s, want_s) and np.array_equal(np.sort(top_i, 1), np.sort(want_i, 1))
    assert ranks[0] >= 2
    with pytest.raises(ValueError, match="first 64 gallery rows"):
        fast_ranks_and_top(queries, gallery, np.full(40, 64), k=7, chunk=64)


def test_distractors_come_from_training_groups_only_without_a_third_object():
    from benchmarks.scaling_gallery import distractor_scenes
    from fastslow.synth import scenes
    from fastslow.synth.presets import synth_config
    from fastslow.synth.splits import split_keys

    synth = synth_config("quick", 0)
    keys = split_keys(scenes.group_keys(), synth.seed, "image")
    drawn = distractor_scenes(synth, 300, seed=0)

    def key(s):
        return (s.axis, tuple(sorted((s.a.colour, s.b.colour))), tuple(sorted((s.a.shape, s.b.shape))))

    canonical = {(ax, tuple(sorted(c)), tuple(sorted(sh))) for split in ("val", "test") for ax, c, sh in keys[split]}
    train = {(ax, tuple(sorted(c)), tuple(sorted(sh))) for ax, c, sh in keys["train"]}
    assert all(key(s) in train and key(s) not in canonical for s in drawn)
    assert all(s.distractor is None for s in drawn)
    assert len({key(s) for s in drawn}) > 50  # many groups, not a few


def test_generated_scenes_stay_in_their_group_with_its_spread():
    from benchmarks.scaling_gallery import generated_scenes

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((3, 32)) * 3
    groups = [g for g in (0, 1, 2) for _ in range(30)]
    vectors = np.stack([centres[g] + rng.standard_normal(32) for g in groups])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    made, rows = generated_scenes(vectors, groups, 3000, np.random.default_rng(2))
    assert made.shape == (3000, 32) and np.allclose(np.linalg.norm(made, axis=1), 1)
    means = np.stack([vectors[np.array(groups) == g].mean(0) for g in range(3)])
    nearest = (made @ means.T).argmax(1)
    assert np.array_equal(nearest, np.array(groups)[rows])  # each in the group of the member it draws on
    # The groups in proportion to their rendered items (the items taken in turn: 34, 33 and 33 rounds of 30).
    assert np.bincount(nearest).tolist() == [1020, 990, 990]
    # As spread as the rendered members: their similarity to the group's mean, on average, about the same.
    real = (vectors * means[groups]).sum(1).mean()
    assert (made * means[nearest]).sum(1).mean() == pytest.approx(real, abs=0.05)
    assert len({tuple(v) for v in np.round(made, 6)}) == 3000  # new scenes, not copies


@pytest.mark.integration  # the benchmark as its own process
@pytest.mark.timeout(600)
def test_the_quick_run_measures_every_method_at_every_size(tmp_path):
    result, out = quick_benchmark("scaling", tmp_path)
    sizes = [20, 50, 200, 1000]
    rows = {(r["n"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {(n, m) for n in sizes for m in ("fast", "fast+slow", "slow")}
    assert result["validation_items"] == 10 and result["rendered"] == 200 and result["generated"] == 790
    assert rows[1000, "fast"]["generated"] == 790 and rows[200, "fast"]["generated"] == 0
    for n in sizes:
        assert all(0 <= rows[n, m]["r1"] <= 100 for m in ("fast", "fast+slow"))
        assert rows[n, "fast"]["latency_ms"] > 0
        # Slow ranks every item only as far as --slow-ranked-max (200); the other methods on its queries beside it.
        assert (rows[n, "slow"]["r1"] is None) == (n > 200)
        assert ("r1_same_queries" in rows[n, "fast"]) == (n <= 200)
    # Slow is timed over the rendered gallery (210 items) and extrapolated past it, in proportion to N.
    assert result["slow_timed_max"] == 200
    assert [rows[n, "slow"]["extrapolated"] for n in sizes] == [False, False, False, True]
    assert rows[1000, "slow"]["latency_ms"] == pytest.approx(rows[200, "slow"]["latency_ms"] * 5, rel=0.01)
    md = out.with_suffix(".md").read_text()
    assert "| 1,000 |" in md and "(e)" in md
    assert out.with_suffix(".png").stat().st_size > 1000
    # Sizes the gallery cannot have: one line naming the option, exit 2, no traceback (the models are kept).
    bad = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--quick", "--out", str(tmp_path / "bad.json"),
                          "--data", str(tmp_path / "data"), "--work", str(tmp_path / "work"), "--sizes", "5"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--sizes: every size is below the 10 validation items" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad.json").exists()
