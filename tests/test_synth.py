"""The synthetic benchmark: determinism, file formats, twin groups, and that pixels agree with captions."""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from fastslow.errors import FastslowError
from fastslow.synth import SynthConfig, generate, write_dataset
from fastslow.synth import captions as cap
from fastslow.synth import motion, scenes
from fastslow.synth.generate import _plan
from fastslow.synth.splits import caption_overlap, split_keys
from fastslow.synth.motion import read_mp4
from fastslow.synth.scenes import RGB

SIZES = dict(n_train=10, n_val=7, n_test=20, n_train_videos=4, n_val_videos=0, n_test_videos=12)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs with seed 0 (one with 2 workers) and one with seed 1."""
    root = tmp_path_factory.mktemp("synth")
    a = generate(str(root / "a"), seed=0, progress=False, **SIZES)
    b = generate(str(root / "b"), seed=0, progress=False, workers=2, **SIZES)
    c = generate(str(root / "c"), seed=1, progress=False, **SIZES)
    return a, b, c


def _images(summary) -> list[dict]:
    with open(summary["files"]["images"]) as f:
        return json.load(f)["images"]


def _videos(summary) -> list[dict]:
    rows = []
    for path in summary["files"]["videos"]:
        with open(path) as f:
            rows += [dict(r, split=os.path.basename(path)[6:-5]) for r in json.load(f)]
    return rows


def _video_path(summary, row) -> str:
    return os.path.join(summary["out_dir"], "videos", f"{row['videoID']}.mp4")


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_same_seed_gives_identical_output_whatever_the_workers(runs):
    a, b, _ = runs
    for sub in ("images/dataset_synth.json", "videos/vatex_train.json", "videos/vatex_test.json", "synth.json"):
        assert _bytes(os.path.join(a["out_dir"], sub)) == _bytes(os.path.join(b["out_dir"], sub)), sub
    for im in _images(a):
        name = os.path.join("images", im["filename"])
        assert _bytes(os.path.join(a["out_dir"], name)) == _bytes(os.path.join(b["out_dir"], name)), name
    for row in _videos(a):
        assert np.array_equal(read_mp4(_video_path(a, row)), read_mp4(_video_path(b, row))), row["videoID"]


def test_different_seed_gives_different_output(runs):
    a, _, c = runs
    assert _bytes(a["files"]["images"]) != _bytes(c["files"]["images"])
    differing = sum(
        _bytes(os.path.join(a["out_dir"], "images", im["filename"]))
        != _bytes(os.path.join(c["out_dir"], "images", im["filename"]))
        for im in _images(a)
    )
    assert differing > len(_images(a)) // 2
    row = _videos(a)[0]
    assert not np.array_equal(read_mp4(_video_path(a, row)), read_mp4(_video_path(c, row)))


def test_karpathy_json_is_valid_and_every_image_decodes(runs):
    a = runs[0]
    with open(a["files"]["images"]) as f:
        data = json.load(f)
    assert data["dataset"] == "synth"
    images = data["images"]
    assert Counter(im["split"] for im in images) == {"train": 10, "val": 7, "test": 20}
    sentids, vocab = [], cap.vocabulary()
    for im in images:
        assert {"filename", "imgid", "split", "sentences", "sentids", "group", "twin"} <= set(im)
        assert im["filename"] == f"{im['imgid']:05d}.png"
        assert len(im["sentences"]) == 5 and len({s["raw"] for s in im["sentences"]}) == 5
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for s in im["sentences"]:
            assert s["tokens"] == cap.tokenize(s["raw"]) and set(s["tokens"]) <= vocab
        sentids += im["sentids"]
        with Image.open(os.path.join(a["out_dir"], "images", im["filename"])) as pic:
            assert pic.mode == "RGB" and pic.size == (96, 96)
            pic.load()
    assert len(set(sentids)) == len(sentids)
    assert len({im["imgid"] for im in images}) == len(images)


def test_vatex_json_is_valid_and_every_video_has_the_requested_frames(runs):
    a = runs[0]
    for split, n in (("train", 4), ("val", 0), ("test", 12)):
        with open(os.path.join(a["out_dir"], "videos", f"vatex_{split}.json")) as f:
            rows = json.load(f)
        assert len(rows) == n
        for row in rows:
            assert {"videoID", "enCap", "group", "twin"} <= set(row)
            assert len(row["enCap"]) == 5 and len(set(row["enCap"])) == 5
            assert all(set(cap.tokenize(c)) <= cap.vocabulary() for c in row["enCap"])
            frames = read_mp4(_video_path(a, row))
            assert frames.shape == (16, 64, 64, 3)


def _groups(rows) -> dict[int, list[dict]]:
    out = defaultdict(list)
    for r in rows:
        out[r["group"]].append(r)
    return out


def test_image_groups_are_whole_in_one_split_with_same_words_bound_differently(runs):
    groups = _groups(_images(runs[0]))
    full = [g for g in groups.values() if len(g) == 5]
    assert len(full) == 7  # 2 train, 1 val (+ a partial one of 2), 4 test
    for members in groups.values():
        assert len({m["split"] for m in members}) == 1
        assert "original" in {m["twin"] for m in members}
        canon = [m["sentences"][0]["raw"] for m in members]
        assert len(set(canon)) == len(canon)
        # Every caption slot, not just the canonical one, has the same bag of words in every twin.
        for k in range(5):
            bags = {tuple(sorted(m["sentences"][k]["tokens"])) for m in members}
            assert len(bags) == 1, [m["sentences"][k]["raw"] for m in members]
    for members in full:
        assert {m["twin"] for m in members} == {"original", "colour_swap", "shape_swap", "size_swap", "position_swap"}
    # No two test groups share a caption: a query's only right answer is its own image.
    test_caps = [s["raw"] for g in groups.values() for m in g if m["split"] == "test" for s in m["sentences"]]
    assert len(set(test_caps)) == len(test_caps)


def _colour_masks(img: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels close to each palette colour (nearest palette colour, within a tolerance)."""
    names = list(RGB)
    pal = np.array([RGB[n] for n in names], dtype=float)
    dist = np.linalg.norm(img[..., None, :].astype(float) - pal, axis=-1)
    nearest = dist.argmin(-1)
    close = dist.min(-1) < 70
    return {n: close & (nearest == i) for i, n in enumerate(names)}


def _extent(mask: np.ndarray) -> int:
    """The longer side of the mask's bounding box, in pixels."""
    ys, xs = np.nonzero(mask)
    return int(max(ys.max() - ys.min(), xs.max() - xs.min())) + 1


CANON = re.compile(r"^a (small|large) (\w+) (\w+) (to the left of|above) a (small|large) (\w+) (\w+)$")


def test_image_pixels_agree_with_the_canonical_caption(runs):
    a = runs[0]
    checked = 0
    for im in _images(a):
        m = CANON.match(im["sentences"][0]["raw"])
        assert m, im["sentences"][0]["raw"]
        size1, col1, _, rel, size2, col2, _ = m.groups()
        with Image.open(os.path.join(a["out_dir"], "images", im["filename"])) as pic:
            masks = _colour_masks(np.asarray(pic.convert("RGB")))
        half = 48
        for colour, first in ((col1, True), (col2, False)):
            mask = masks[colour]
            lo, hi = (mask[:, :half], mask[:, half:]) if rel == "to the left of" else (mask[:half], mask[half:])
            assert (lo.sum() > hi.sum()) == first, (im["filename"], colour, rel)
        large, small = (col1, col2) if size1 == "large" else (col2, col1)
        assert _extent(masks[large]) > 1.2 * _extent(masks[small]), im["filename"]
        checked += 1
    assert checked == len(_images(a))


def test_video_twins_reverse_frames_and_swap_words(runs):
    a = runs[0]
    groups = _groups(_videos(a))
    assert len(groups) == 4
    for members in groups.values():
        assert len({m["split"] for m in members}) == 1
        by = {m["twin"]: m for m in members}
        assert set(by) == {"original", "time_reverse", "colour_swap", "direction_swap"}
        canon = {k: m["enCap"][0] for k, m in by.items()}
        assert len(set(canon.values())) == 4
        bag = {k: sorted(cap.tokenize(c)) for k, c in canon.items()}
        flip = {**cap.OPPOSITE, "appears": "disappears", "disappears": "appears"}
        assert bag["colour_swap"] == bag["original"]
        assert bag["direction_swap"] == sorted(cap.OPPOSITE.get(w, w) for w in bag["original"])
        assert bag["time_reverse"] == sorted(flip.get(w, w) for w in bag["original"])
        frames = {k: read_mp4(_video_path(a, m)).astype(float) for k, m in by.items()}
        reversed_err = np.abs(frames["time_reverse"] - frames["original"][::-1]).mean()
        assert reversed_err < 1.0
        assert np.abs(frames["time_reverse"] - frames["original"]).mean() > 5 * reversed_err
        assert np.abs(frames["direction_swap"] - frames["time_reverse"]).mean() > 5 * reversed_err
        # Mean-pooling over time cannot tell the original from its reversal.
        assert np.abs(frames["time_reverse"].mean(0) - frames["original"].mean(0)).mean() < 1.0


CLAUSE = re.compile(r"a (\w+) (\w+) (moves (up|down|left|right)|appears|disappears)")


def test_video_pixels_agree_with_the_canonical_caption(runs):
    a = runs[0]
    for row in _videos(a):
        clauses = CLAUSE.findall(row["enCap"][0])
        assert len(clauses) == 2, row["enCap"][0]
        frames = read_mp4(_video_path(a, row))
        for (colour, _, event, direction), (s, e) in zip(clauses, ((0, 8), (8, 16))):
            first, last = (_colour_masks(frames[f])[colour] for f in (s, e - 1))
            if event == "appears":
                assert first.sum() < 5 and last.sum() > 40, (row["videoID"], event)
            elif event == "disappears":
                assert first.sum() > 40 and last.sum() < 5, (row["videoID"], event)
            else:
                (y0, x0), (y1, x1) = (np.argwhere(m).mean(0) for m in (first, last))
                step = {"up": y0 - y1, "down": y1 - y0, "left": x0 - x1, "right": x1 - x0}[direction]
                assert step > 10, (row["videoID"], row["enCap"][0], step)


@pytest.mark.parametrize("media", ["image", "video"])
def test_test_scenes_are_combinations_never_seen_in_training_of_words_that_are(media):
    """The quick size's plan (no rendering): test, val and train draw from disjoint scene types."""
    items = _plan(SynthConfig(), media)
    by_split = defaultdict(list)
    for it in items:
        by_split[it["split"]].append(it)
    assert caption_overlap(items) == 0.0
    seen = {c for it in by_split["train"] for c in it["captions"]}
    assert not seen & {c for it in by_split["val"] for c in it["captions"]}
    words = {w for c in seen for w in cap.tokenize(c)}
    assert {w for it in by_split["test"] for c in it["captions"] for w in cap.tokenize(c)} <= words
    # Captions repeat across training images (several scenes read alike); never within test.
    test_caps = [c for it in by_split["test"] for c in it["captions"]]
    assert len(set(test_caps)) == len(test_caps)
    keys = {s: split_keys(scenes.group_keys() if media == "image" else motion.group_keys(), 0, media)[s]
            for s in ("train", "val", "test")}
    assert not set(keys["train"]) & set(keys["test"]) and not set(keys["val"]) & set(keys["test"])


def test_the_summary_reports_no_test_caption_seen_in_training(runs):
    for summary in runs:
        assert summary["test_captions_seen_in_train"] == {"images": 0.0, "videos": 0.0}


def test_bad_input_raises_one_line_errors(tmp_path):
    for bad in (dict(n_test=-1), dict(captions_per_item=0), dict(captions_per_item=99), dict(video_size=65)):
        with pytest.raises(FastslowError):
            write_dataset(SynthConfig(**bad), str(tmp_path / "x"), progress=False)
    with pytest.raises(FastslowError):
        write_dataset(SynthConfig(image_twins=("colour_swap", "colour_swap")), str(tmp_path / "x"), progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FastslowError, match="not empty"):
        generate(str(foreign), n_train=5, n_test=0, n_train_videos=0, n_test_videos=0, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_rerun_in_place_drops_stale_items(tmp_path):
    out = str(tmp_path / "d")
    sizes = dict(n_val=0, n_test=0, n_train_videos=0, n_val_videos=0, n_test_videos=0, progress=False)
    generate(out, n_train=10, **sizes)
    summary = generate(out, n_train=5, **sizes)
    assert sorted(os.listdir(os.path.join(out, "images"))) == sorted(
        [im["filename"] for im in _images(summary)] + ["dataset_synth.json"]
    )
    assert summary["images"] == {"train": 5, "val": 0, "test": 0}


def test_uncaptioned_images_are_a_bare_folder_and_leave_the_splits_as_they_were(runs, tmp_path):
    from fastslow.data.decode import DecodeConfig
    from fastslow.data.folder import FolderReader
    from fastslow.data.loaded import load_split

    out = str(tmp_path / "u")
    summary = write_dataset(SynthConfig(seed=0, n_uncaptioned=6, **SIZES), out, progress=False)
    assert summary["images"]["uncaptioned"] == 6
    # The captioned splits are those of the same seed without uncaptioned images, file for file.
    without = runs[0]
    assert _images(summary) == _images(without)
    for im in _images(summary):
        assert _bytes(os.path.join(out, "images", im["filename"])) == _bytes(
            os.path.join(without["out_dir"], "images", im["filename"]))
    folder = os.path.join(out, "images_uncaptioned")
    names = sorted(os.listdir(folder))
    assert len(names) == 6 and all(n.endswith(".png") for n in names)  # no captions beside them
    assert not set(names) & {im["filename"] for im in _images(summary)}
    loaded = load_split(FolderReader(folder), None, DecodeConfig(image_size=32), progress=False)
    assert len(loaded.ids) == 6 and loaded.captions == [[]] * 6 and not loaded.report.problems
    # New scenes, not copies of the captioned images.
    captioned = {_bytes(os.path.join(out, "images", im["filename"])) for im in _images(summary)}
    assert not {_bytes(os.path.join(folder, n)) for n in names} & captioned
    # Rewritten without them: none is left behind.
    write_dataset(SynthConfig(seed=0, **SIZES), out, progress=False)
    assert not [n for n in os.listdir(folder) if n.endswith(".png")]
    with pytest.raises(FastslowError, match="n_uncaptioned must be >= 0"):
        write_dataset(SynthConfig(n_uncaptioned=-1), str(tmp_path / "x"), progress=False)
