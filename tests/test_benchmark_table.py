"""`python -m benchmarks.paper_table` end to end at the tiny size, through its real entry point."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from benchmarks.model_cache import ModelCache
from benchmarks.table_spec import CONFIGS, TABLE_CONFIG, model_depends, table_sizes, table_spec
from fastslow.config import FastRunConfig, SlowRunConfig, load_config
from fastslow.errors import FastslowError

ROW_KEYS = {"modality", "method", "k", "r1", "r5", "r10", "median_rank", "queries", "gallery"}
TIMINGS = ("latency_ms", "queries_per_s", "speedup_latency", "speedup_throughput")
METRICS = ("r1", "r5", "r10", "median_rank")


def paper_table(tmp_path, *extra):
    """Run the table's entry point at the tiny size on tmp_path's data and kept models."""
    return subprocess.run([sys.executable, "-m", "benchmarks.paper_table", "--tiny",
                           "--out", str(tmp_path / "table.json"), "--data-dir", str(tmp_path / "data"),
                           "--models-dir", str(tmp_path / "models"), "--no-progress", *extra], capture_output=True, text=True, timeout=300)


@pytest.mark.integration  # runs python -m benchmarks.paper_table
def test_tiny_table_has_the_rows_and_files(tmp_path):
    out, models = tmp_path / "table.json", tmp_path / "models"
    proc = paper_table(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads(out.read_text())
    assert table["split"] == "test"
    rows = {(r["modality"], r["method"]): r for r in table["rows"]}
    methods = {"chance", "fast", "slow", "fast_distilled"}
    assert set(rows) == {(m, x) for m in ("image", "video") for x in methods | {"fast+slow", "fast_distilled+slow"}} | {
        ("image", "fast_soft_targets")}
    # Images: Fast distilled over the 40 captioned train images plus 20 uncaptioned ones captioned by Slow (the
    # transfer set), the soft-target term alone as its own row; videos have no transfer set.
    distilled = rows[("image", "fast_distilled")]
    assert distilled["captioned_items"] == 40 and distilled["teacher_captioned_items"] == 20
    assert (distilled["queries"], distilled["gallery"]) == (100, 20)
    assert "teacher_captioned_items" not in rows[("video", "fast_distilled")]
    notes = "".join(table["notes"])
    assert "fast_distilled (images): Fast's schedule over the captioned train images plus 20 uncaptioned" in notes
    assert "the fast_distilled row of videos, fast_soft_targets of images." in notes
    for modality in ("image", "video"):
        for method in ("fast+slow", "fast_distilled+slow"):
            assert [r["k"] for r in table["rows"] if r["method"] == method and r["modality"] == modality] == [1, 5, 20]
        assert_recalls_consistent(table["rows"], modality)
    for row in table["rows"]:
        assert ROW_KEYS <= set(row)
        assert 0 <= row["r1"] <= row["r5"] <= row["r10"] <= 100
    # The tiny synth size: 20 test images and 12 test videos, 5 captions each.
    assert rows[("image", "fast")]["gallery"] == 20 and rows[("image", "fast")]["queries"] == 100
    assert rows[("video", "fast")]["gallery"] == 12 and rows[("video", "fast")]["queries"] == 60
    assert rows[("image", "chance")]["r1"] == pytest.approx(5.0) and rows[("video", "chance")]["r5"] == pytest.approx(5 / 12 * 100, abs=0.01)
    # Slow over the whole gallery ranks one caption per item; the other rows are also reported on those queries.
    assert rows[("image", "slow")]["queries"] == 20 and set(rows[("image", "fast")]["same_queries"]) == set(METRICS)
    assert_timings(table)
    markdown = out.with_suffix(".md").read_text()
    assert "| image | fast |" in markdown and "| video | chance |" in markdown and "| video | fast+slow | 5 |" in markdown
    assert "| latency_ms | queries_per_s |" in markdown and "(tiny, test split, seed 0)" in markdown
    assert out.with_suffix(".png").stat().st_size > 10_000

    # A rerun reuses the generated data and the trained models (4 of images: fast, slow, the two students), and
    # gives the same rows; --retrain trains them again, from the same seed. Videos keep 3 (no transfer set).
    first = [r for r in table["rows"] if r["modality"] == "image"]
    for extra, reused in (([], 4), (["--retrain"], 0)):
        again = paper_table(tmp_path, "--modalities", "image", *extra)
        assert again.returncode == 0 and "reusing the synthetic benchmark" in again.stderr, again.stderr[-3000:]
        assert again.stderr.count(f"from {models}/") == reused, again.stderr[-3000:]
        rows_again = json.loads(out.read_text())["rows"]
        assert [strip_timing(r) for r in rows_again] == [strip_timing(r) for r in first]
    assert len(list(models.iterdir())) == 4 + 3 and not list(models.glob("*.partial"))

    # The settings are chosen on the validation split: the same kept models, evaluated on its 10 images.
    val = paper_table(tmp_path, "--modalities", "image", "--split", "val")
    assert val.returncode == 0 and val.stderr.count(f"from {models}/") == 4, val.stderr[-3000:]
    table = json.loads(out.read_text())
    assert table["split"] == "val" and "Every caption of the val split is a query" in "".join(table["notes"])
    assert {(r["queries"], r["gallery"]) for r in table["rows"] if r["method"] != "slow"} == {(50, 10)}
    assert_recalls_consistent(table["rows"], "image")
    assert_timings(table)
    # A tuning run of a Fast or Slow setting leaves the students out: only Fast and Slow are loaded, and the
    # rows it keeps are the full run's.
    bare = paper_table(tmp_path, "--modalities", "image", "--split", "val", "--no-students")
    assert bare.returncode == 0 and bare.stderr.count(f"from {models}/") == 2, bare.stderr[-3000:]
    bare_table = json.loads(out.read_text())
    assert bare_table["students"] is False
    assert [strip_timing(r) for r in bare_table["rows"]] == [
        strip_timing(r) for r in table["rows"] if not r["method"].startswith("fast_")]
    assert {r["method"] for r in bare_table["rows"]} == {"chance", "fast", "slow", "fast+slow"}
    # The README quotes the test split only: a val run cannot rewrite it.
    for partial in (["--split", "val"], ["--no-students"]):
        refused = paper_table(tmp_path, *partial, "--update-readme", str(tmp_path / "README.md"))
        assert refused.returncode == 2 and "--update-readme: the README quotes the quick and full" in refused.stderr


def assert_recalls_consistent(rows: list[dict], modality: str) -> None:
    """Re-ranking K=1 keeps the first stage's order; K=5 keeps its R@5; K=20 (the whole tiny gallery) is Slow over
    all, whichever Fast shortlisted."""
    by = {(r["method"], r["k"]): r for r in rows if r["modality"] == modality}
    slow = by[("slow", None)]
    for first in ("fast", "fast_distilled"):
        stage, reranked = by[(first, None)], {k: by[(f"{first}+slow", k)] for k in (1, 5, 20)}
        assert [reranked[1][m] for m in METRICS] == [stage[m] for m in METRICS]
        assert reranked[1]["same_queries"] == stage["same_queries"]
        assert reranked[5]["r5"] == stage["r5"]
        assert reranked[20]["same_queries"] == {m: slow[m] for m in METRICS}
    assert [by[("fast+slow", 20)][m] for m in METRICS] == [by[("fast_distilled+slow", 20)][m] for m in METRICS]


def assert_timings(table: dict) -> None:
    """Both timing columns on every method, from the same sample; speed-ups from those figures."""
    for modality, timing in table["timing"].items():
        rows = [r for r in table["rows"] if r["modality"] == modality]
        slow = next(r for r in rows if r["method"] == "slow")
        # Every method timed on Slow's queries (one per item): 10 one at a time, up to 20 in batches of 8.
        sample = (timing["latency_queries"], timing["throughput_queries"], timing["batch"])
        assert sample == (10, min(20, slow["queries"]), 8)
        for row in rows:
            if row["method"] == "chance":
                assert not set(TIMINGS) & set(row)
                continue
            assert row["latency_ms"] > 0 and row["queries_per_s"] > 0
            # Queries in flight at once (throughput x latency): 1 to a few hundred here (batched Slow re-ranking of
            # a tiny model costs far less per query than one at a time, and a busy machine moves the latency sample);
            # a ms/s mix-up moves it 1,000-fold.
            assert 0.01 <= row["queries_per_s"] * row["latency_ms"] / 1000 <= 100 * timing["batch"], row
            if row["k"] is None:
                assert "speedup_latency" not in row
                continue
            assert row["speedup_latency"] == pytest.approx(slow["latency_ms"] / row["latency_ms"], rel=0.02, abs=0.01)
            assert row["speedup_throughput"] == pytest.approx(row["queries_per_s"] / slow["queries_per_s"], rel=0.02,
                                                              abs=0.01)


def strip_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMINGS}


def test_each_kept_model_is_keyed_on_what_it_depends_on():
    cache = ModelCache(None, {"seed": 0, "train": "fingerprint"})

    def keys(spec, modality):
        return {name: cache.key(name, depends) for name, depends in model_depends(spec, modality).items()}

    spec = table_spec("quick")
    before = keys(spec, "image")
    assert len(set(before.values())) == 4
    # A change to images' Fast retrains Fast and both students, keeps Slow, and leaves videos (their own Fast).
    wider = replace(spec, image=replace(spec.image, fast=replace(spec.image.fast, embed_dim=128)))
    after = keys(wider, "image")
    assert after["slow"] == before["slow"] and all(after[m] != before[m] for m in after if m != "slow")
    assert keys(wider, "video") == keys(spec, "video")
    # A change to Slow's schedule keeps Fast and retrains the rest; so does another distillation weight for
    # the soft-target student alone.
    longer = keys(replace(spec, image=replace(spec.image, slow_train=replace(spec.image.slow_train, epochs=99))),
                  "image")
    assert longer["fast"] == before["fast"] and all(longer[m] != before[m] for m in longer if m != "fast")
    heavier = keys(replace(spec, distill=replace(spec.distill, weight=spec.distill.weight + 1)), "image")
    assert {m for m in heavier if heavier[m] != before[m]} == {"fast_soft_targets"}
    # The soft-target student's neighbours (the distill preset's) are its own: they key it alone.
    wider_pool = keys(replace(spec, distill_neighbours=spec.distill_neighbours + 2), "image")
    assert {m for m in wider_pool if wider_pool[m] != before[m]} == {"fast_soft_targets"}


@pytest.mark.integration  # runs python -m benchmarks.paper_table
def test_soft_target_student_has_neighbour_batches_when_fast_has_none(tmp_path):
    """Fast may train on random batches (train.neighbours=0); the soft-target student still gets batches with the
    distill preset's neighbours, the candidates the teacher scores, where before it failed on the missing table."""
    spec = table_spec("tiny", overrides=["image.fast:train.neighbours=0"])
    assert spec.image.fast_train.neighbours == 0
    assert spec.soft_target_schedule("image") == replace(spec.image.fast_train, neighbours=3)
    assert table_spec("tiny").soft_target_schedule("image") == replace(table_spec("tiny").image.fast_train, neighbours=3)
    proc = paper_table(tmp_path, "--modalities", "image", "--override", "image.fast:train.neighbours=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["method"]: r for r in json.loads((tmp_path / "table.json").read_text())["rows"]}
    assert {"fast", "fast_soft_targets", "fast_distilled"} <= set(rows)
    with pytest.raises(FastslowError, match="the soft-target student needs neighbour batches"):
        table_spec("tiny", overrides=["distill:train.neighbours=0"])


def test_table_models_come_from_the_presets():
    """configs/benchmark/table.yaml names the presets; the table differs from them only by its overrides."""
    assert table_sizes() == ["quick", "full", "tiny"]
    quick, full, tiny = (table_spec(size) for size in ("quick", "full", "tiny"))
    assert quick == full
    images, videos = (load_config(FastRunConfig, str(CONFIGS / f"fast_synth_{m}.yaml")) for m in ("images", "videos"))
    slow = load_config(SlowRunConfig, str(CONFIGS / "slow_synth_images.yaml"))
    assert (quick.image.fast, quick.image.fast_train) == (images.model, images.train)
    assert (quick.video.fast, quick.video.fast_train) == (videos.model, videos.train)
    assert quick.image.slow == quick.video.slow == slow.model
    assert (quick.image.slow_train.epochs, quick.video.slow_train.epochs) == (10, 25)
    assert quick.image.slow_train == slow.train and replace(quick.video.slow_train, epochs=10) == slow.train
    assert quick.ks == (5, 10, 20, 50) and quick.uncaptioned == 2000
    assert (quick.timing.latency_queries, quick.timing.throughput_queries, quick.timing.batch) == (64, 512, 64)
    assert tiny.video == tiny.image and tiny.image.fast.vision.kind == "tiny_cnn" and tiny.ks == (1, 5, 20)
    with pytest.raises(FastslowError, match="no size 'huge'"):
        table_spec("huge")


def test_table_config_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "table.yaml"
    bad.write_text(TABLE_CONFIG.read_text().replace("rerank_ks: [1, 5, 20]", "rerank_ks: [1, 5, 20]\n  epochs: 3"))
    with pytest.raises(FastslowError, match="unknown key.*epochs"):
        table_spec("tiny", bad)


def test_a_tuning_run_overrides_the_table_settings():
    """--override (a val run trying a setting) changes that setting only, and says what it could not change."""
    quick = table_spec("quick")
    tuned = table_spec("quick", overrides=["image.fast:train.epochs=3", "image.slow:train.epochs=4", "uncaptioned=10",
                                           "distill:distill.weight=0.25", "timing.batch=16"])
    assert (tuned.image.fast_train.epochs, tuned.image.slow_train.epochs, tuned.uncaptioned) == (3, 4, 10)
    assert (tuned.distill.weight, tuned.timing.batch) == (0.25, 16)
    assert tuned.video == quick.video and tuned.image.fast == quick.image.fast
    # The override applies to the size named only (quick and full share one YAML anchor).
    assert table_spec("full") == quick
    with pytest.raises(FastslowError, match="tiny size has no video.fast of its own"):
        table_spec("tiny", overrides=["video.fast:train.epochs=3"])
    with pytest.raises(FastslowError, match="no preset 'text.fast'"):
        table_spec("quick", overrides=["text.fast:train.epochs=3"])
    with pytest.raises(FastslowError, match="timing.batch = 0: must be at least 1"):
        table_spec("quick", overrides=["timing.batch=0"])
