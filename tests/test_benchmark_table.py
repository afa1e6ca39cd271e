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

ROW_KEYS = {"modality", "method", "k", "r1", "r5", "r10", "median_rank", "ms_per_query"}


@pytest.mark.integration  # runs python -m benchmarks.paper_table
def test_tiny_table_has_the_rows_and_files(tmp_path):
    out = tmp_path / "table.json"
    models = tmp_path / "models"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.paper_table", "--tiny", "--out", str(out),
                           "--data-dir", str(tmp_path / "data"), "--models-dir", str(models), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads(out.read_text())
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
    for method in ("fast+slow", "fast_distilled+slow"):
        assert sorted(r["k"] for r in table["rows"] if r["method"] == method and r["modality"] == "image") == [2, 5]
    # Re-ranking only reorders the top K: R@K (here R@5 at K=5) is the first stage's.
    for first in ("fast", "fast_distilled"):
        reranked = next(r for r in table["rows"] if r["method"] == f"{first}+slow" and r["k"] == 5 and r["modality"] == "image")
        assert reranked["r5"] == rows[("image", first)]["r5"]
    for row in table["rows"]:
        assert ROW_KEYS <= set(row)
        assert 0 <= row["r1"] <= row["r5"] <= row["r10"] <= 100
    # The tiny synth size: 20 test images and 12 test videos, 5 captions each.
    assert rows[("image", "fast")]["gallery"] == 20 and rows[("image", "fast")]["queries"] == 100
    assert rows[("video", "fast")]["gallery"] == 12 and rows[("video", "fast")]["queries"] == 60
    assert rows[("image", "chance")]["r1"] == pytest.approx(5.0) and rows[("video", "chance")]["r5"] == pytest.approx(5 / 12 * 100, abs=0.01)
    assert rows[("image", "fast")]["ms_per_query"] > 0 and rows[("image", "slow")]["ms_per_query"] > 0
    # Slow over the whole gallery ranks one caption per item; Fast is also reported on those queries.
    assert rows[("image", "slow")]["queries"] == 20 and "r1_same_queries" in rows[("image", "fast")]
    markdown = out.with_suffix(".md").read_text()
    assert "| image | fast |" in markdown and "| video | chance |" in markdown and "| video | fast+slow | 5 |" in markdown
    assert out.with_suffix(".png").stat().st_size > 10_000

    # A rerun reuses the generated data and the trained models (4 of images: fast, slow, the two students), and
    # gives the same rows; --retrain trains them again, from the same seed. Videos keep 3 (no transfer set).
    first = [r for r in table["rows"] if r["modality"] == "image"]
    for extra, reused in (([], 4), (["--retrain"], 0)):
        again = subprocess.run([sys.executable, "-m", "benchmarks.paper_table", "--tiny", "--out", str(out),
                                "--data-dir", str(tmp_path / "data"), "--models-dir", str(models), "--no-progress",
                                "--modalities", "image", *extra], capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "reusing the synthetic benchmark" in again.stderr, again.stderr[-3000:]
        assert again.stderr.count(f"from {models}/") == reused, again.stderr[-3000:]
        rows_again = json.loads(out.read_text())["rows"]
        assert [strip_timing(r) for r in rows_again] == [strip_timing(r) for r in first]
    assert len(list(models.iterdir())) == 4 + 3 and not list(models.glob("*.partial"))


def strip_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "ms_per_query"}


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
    assert (quick.image.slow_train.epochs, quick.video.slow_train.epochs) == (15, 25)
    assert replace(quick.video.slow_train, epochs=slow.train.epochs) == slow.train
    assert quick.ks == (5, 10, 20, 50) and quick.uncaptioned == 4000
    assert tiny.video == tiny.image and tiny.image.fast.vision.kind == "tiny_cnn" and tiny.ks == (2, 5)
    with pytest.raises(FastslowError, match="no size 'huge'"):
        table_spec("huge")


def test_table_config_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "table.yaml"
    bad.write_text(TABLE_CONFIG.read_text().replace("rerank_ks: [2, 5]", "rerank_ks: [2, 5]\n  epochs: 3"))
    with pytest.raises(FastslowError, match="unknown key.*epochs"):
        table_spec("tiny", bad)
