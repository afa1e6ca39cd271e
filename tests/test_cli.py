"""The `fastslow` command the way a user runs it: synth, train, eval, and bad input."""

import json
import os
import subprocess
import sys

import pytest
from helpers import TINY_FAST


# Every test runs the `fastslow` command in a process of its own: the integration tier.
pytestmark = pytest.mark.integration

def fastslow(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "fastslow", *args, "--no-progress"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check and proc.returncode != 0:
        raise AssertionError(f"fastslow {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def tiny_synth(tiny_corpus):
    """conftest's tiny set, made by `fastslow synth --size tiny`."""
    import pathlib

    return pathlib.Path(tiny_corpus)


def test_synth_wrote_the_tiny_set(tiny_synth):
    dataset = json.loads(next((tiny_synth / "images").glob("dataset_*.json")).read_text())
    splits = [image["split"] for image in dataset["images"]]
    assert {s: splits.count(s) for s in set(splits)} == {"train": 40, "val": 10, "test": 20}
    # What `fastslow synth` prints and records: no test caption is found word for word in training.
    record = json.loads((tiny_synth / "synth.json").read_text())
    assert record["test_captions_seen_in_train"] == {"images": 0.0, "videos": 0.0}


def test_train_then_eval_through_the_cli(tmp_path):
    """Fast trained on 400 synthetic images, evaluated on the held-out test split, whose scene combinations the
    training never saw: far above chance at finding the scene, if not which of its five twins is meant."""
    data, run = tmp_path / "synth", tmp_path / "run"
    fastslow("synth", "--out", str(data), "--size", "tiny", "n_train=400", "n_train_videos=0", "n_val_videos=0",
             "n_test_videos=0")
    # The offline default towers (pretrained, frozen; features cached) at a small image size.
    trained = json.loads(fastslow("train", "fast", "--data", str(data / "images"), "--out", str(run),
                                  "model.vision.image_size=64", "model.head_hidden=0", "train.epochs=8",
                                  "train.batch_size=16", "train.lr=0.001", "train.warmup_steps=5").stdout)
    assert trained["train_items"] == 400 and trained["steps"] == 200
    history = json.loads((run / "history.json").read_text())
    first, last = history[0]["loss"], sum(h["loss"] for h in history[-10:]) / 10
    assert last < 0.75 * first, (first, last)
    assert (run / "checkpoint" / "model.safetensors").exists() and (run / "config.yaml").exists()

    metrics = json.loads(fastslow("eval", "--checkpoint", str(run / "checkpoint"), "--data", str(data / "images"),
                                  "--split", "test", "--json", str(tmp_path / "m.json")).stdout)
    assert metrics["split"] == "test" and metrics["queries"] == 100 and metrics["gallery"] == 20
    # Measured: R@5 77 and R@10 94 against chance 25 and 50.
    assert metrics["r5"] > 2 * metrics["chance"]["r5"] and metrics["r10"] > 1.5 * metrics["chance"]["r10"], metrics
    assert json.loads((tmp_path / "m.json").read_text()) == metrics


def test_train_on_videos_through_the_cli(tiny_synth, tmp_path):
    """The videos' format trains and evaluates too (frames pooled over time)."""
    trained_v = json.loads(fastslow("train", "fast", "--data", str(tiny_synth / "videos"), "--out", str(tmp_path / "v"),
                                    *TINY_FAST, "train.epochs=1", "train.batch_size=8", "data.num_frames=4").stdout)
    assert trained_v["train_items"] == 24 and trained_v["val"]["gallery"] == 8


@pytest.mark.parametrize("case", ["missing", "malformed", "unknown_format", "bad_override"])
def test_bad_input_is_one_line_naming_the_input(case, tmp_path):
    bad = tmp_path / "dataset_x.json"
    if case == "missing":
        args, needle = ["--data", str(tmp_path / "nope.json")], "nope.json"
    elif case == "malformed":
        bad.write_text("{not json")
        args, needle = ["--data", str(bad)], "dataset_x.json"
    elif case == "unknown_format":
        args, needle = ["--data", str(bad), "--format", "hdf5"], "hdf5"
    else:
        args, needle = ["--data", str(bad), "train.epochz=3"], "epochz"
    proc = fastslow("train", "fast", "--out", str(tmp_path / "run"), *args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("fastslow train: error:") and needle in lines[0], lines[0]


def test_eval_of_a_missing_checkpoint(tmp_path):
    proc = fastslow("eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(tmp_path), check=False)
    assert proc.returncode == 2 and "ckpt" in proc.stderr and "Traceback" not in proc.stderr


def test_help_explains_each_command():
    for command in ("synth", "train", "eval"):
        out = subprocess.run([sys.executable, "-m", "fastslow", command, "--help"], capture_output=True, text=True).stdout
        assert "--data" in out or "--out" in out


def test_synth_bad_setting_is_one_line(tmp_path):
    proc = fastslow("synth", "--out", str(tmp_path / "s"), "--size", "tiny", "n_tset=3", check=False)
    assert proc.returncode == 2 and "n_tset" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# The packaged frozen towers at 64 px (their maps are cached), a narrow decoder.
SMALL_SLOW = ["model.vision.image_size=64", "model.dim=64", "model.ffn=128"]


def test_slow_distill_and_rerank_through_the_cli(tiny_synth, tiny_fast_checkpoint, tmp_path):
    data = str(tiny_synth / "images")
    slow = json.loads(fastslow("train", "slow", "--data", data, "--out", str(tmp_path / "slow"), *SMALL_SLOW,
                               "train.epochs=20", "train.batch_size=8").stdout)
    history = json.loads((tmp_path / "slow" / "history.json").read_text())
    assert slow["steps"] == 100 and history[-1]["loss"] < history[0]["loss"]
    assert slow["val"]["gallery"] == 10 and slow["val"]["queries"] == 10  # each val item's first caption

    fast_args = ["--data", data, *TINY_FAST, "train.epochs=3", "train.batch_size=8"]
    student = json.loads(fastslow("train", "distill", "--out", str(tmp_path / "student"), *fast_args,
                                  f"teacher={slow['checkpoint']}", "train.neighbours=1", "distill.weight=2").stdout)
    assert student["teacher"] == slow["checkpoint"] and student["val"]["gallery"] == 10
    distilled = json.loads((tmp_path / "student" / "history.json").read_text())
    assert all("distill" in h for h in distilled) and any(h["candidates"] > 1 for h in distilled)

    # K = 1 keeps Fast's ranking exactly; K = the gallery is Slow's ranking of every caption.
    evaluate = lambda *extra: json.loads(fastslow(  # noqa: E731
        "eval", "--checkpoint", tiny_fast_checkpoint, "--data", data, "--split", "train", *extra).stdout)
    plain, k1 = evaluate(), evaluate("--rerank", slow["checkpoint"], "--k", "1")
    assert {m: k1[m] for m in ("r1", "r5", "r10", "median_rank")} == {m: plain[m] for m in ("r1", "r5", "r10", "median_rank")}
    everything = evaluate("--rerank", slow["checkpoint"], "--k", "40")
    assert everything["k"] == 40 and everything["r1"] > 3 * everything["chance"]["r1"], everything


def test_distill_over_a_transfer_set_of_uncaptioned_images(tiny_synth, tiny_fast_checkpoint, tiny_slow_checkpoint,
                                                          tmp_path):
    """`transfer.items`: uncaptioned images join the training set with captions the teacher chose."""
    import shutil

    data = str(tiny_synth / "images")
    uncaptioned = tmp_path / "uncaptioned"
    uncaptioned.mkdir()
    for i in range(1, 13):  # 12 readable images without captions, and one that is not an image
        shutil.copy(tiny_synth / "images" / f"{i:05d}.png", uncaptioned / f"shot_{i}.png")
    (uncaptioned / "broken.png").write_bytes(b"not a png")
    fast_args = ["--data", data, *TINY_FAST, "train.epochs=2", "train.batch_size=8", "train.neighbours=1"]
    student = json.loads(fastslow("train", "distill", "--out", str(tmp_path / "student"), *fast_args,
                                  f"teacher={tiny_slow_checkpoint}", f"transfer.items={uncaptioned}",
                                  f"transfer.fast={tiny_fast_checkpoint}", "transfer.most=2").stdout)
    transfer = student["transfer"]
    assert transfer["items"] == 12 and transfer["skipped"] == 1 and 1 <= transfer["captions_per_item"] <= 2
    skipped = [json.loads(line) for line in (tmp_path / "student" / "skipped_transfer.jsonl").read_text().splitlines()]
    assert [s["uri"].endswith("broken.png") for s in skipped] == [True]
    # 40 captioned + 12 teacher-captioned images: more steps per epoch than Fast over the 40 alone (5 of 8).
    assert student["train_items"] == 40 and student["steps"] > 2 * (40 // 8)
    # Videos cannot join images: one line naming the transfer set.
    proc = fastslow("train", "distill", "--out", str(tmp_path / "student2"), *fast_args, f"teacher={tiny_slow_checkpoint}",
                    f"transfer.items={tiny_synth / 'videos'}", f"transfer.fast={tiny_fast_checkpoint}", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("fastslow train: error: transfer.items") and "holds videos" in last, proc.stderr


@pytest.mark.parametrize("case", ["no_teacher", "fast_as_teacher", "no_neighbours", "transfer_without_fast"])
def test_distill_refuses_bad_settings_in_one_line(case, tiny_synth, tmp_path, request):
    data = str(tiny_synth / "images")
    args = ["--data", data, *TINY_FAST, "train.epochs=1", "train.batch_size=8"]
    if case == "fast_as_teacher":
        fast = request.getfixturevalue("tiny_fast_checkpoint")
        args, needle = [*args, f"teacher={fast}"], "expected a Slow checkpoint"
    elif case == "no_neighbours":
        args, needle = [*args, f"teacher={tmp_path}", "train.neighbours=0"], "neighbours"
    elif case == "transfer_without_fast":
        args, needle = [*args, f"teacher={tmp_path}", f"transfer.items={tmp_path}"], "transfer.fast is not"
    else:
        needle = "teacher is not set"
    proc = fastslow("train", "distill", "--out", str(tmp_path / "student"), *args, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr, proc.stderr
