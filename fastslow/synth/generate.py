"""Write the synthetic benchmark: Karpathy-format images, VATEX-format videos and the generator's parameters."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from fastslow.errors import FastslowError
from fastslow.synth import captions as cap
from fastslow.synth import motion, scenes
from fastslow.synth.splits import UNCAPTIONED, caption_overlap, split_keys

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
MEDIA_DIRS = ("images", "videos", "images_uncaptioned")
_GENERATED = re.compile(r"^(\d{5,}\.png|v\d{5,}\.mp4)$")


@dataclass
class SynthConfig:
    """Everything that determines the dataset's content; the defaults are the quick size."""

    seed: int = 0
    n_train: int = 4000
    n_val: int = 200
    n_test: int = 500
    n_train_videos: int = 1200
    n_val_videos: int = 100
    n_test_videos: int = 200
    n_uncaptioned: int = 0  # images for distillation's transfer set (fastslow/teacher_captions.py)
    captions_per_item: int = 5
    image_size: int = 96
    video_size: int = 64
    video_frames: int = 16
    fps: int = 8
    image_twins: tuple[str, ...] = field(default=scenes.IMAGE_TWINS)
    video_twins: tuple[str, ...] = field(default=motion.VIDEO_TWINS)
    distractor_prob: float = 0.5

    def validate(self) -> None:
        """Raise FastslowError naming the first bad parameter."""
        counts = ("n_train", "n_val", "n_test", "n_train_videos", "n_val_videos", "n_test_videos", "n_uncaptioned")
        for name in counts:
            if getattr(self, name) < 0:
                raise FastslowError(f"synth: {name} must be >= 0, got {getattr(self, name)}")
        most = min(cap.MAX_IMAGE_CAPTIONS, cap.MAX_VIDEO_CAPTIONS)
        if not 1 <= self.captions_per_item <= most:
            raise FastslowError(f"synth: captions_per_item must be 1..{most}, got {self.captions_per_item}")
        if self.image_size < 32:
            raise FastslowError(f"synth: image_size must be >= 32, got {self.image_size}")
        if self.video_size < 32 or self.video_size % 2:
            raise FastslowError(f"synth: video_size must be even and >= 32 (yuv420p), got {self.video_size}")
        if self.video_frames < 4:
            raise FastslowError(f"synth: video_frames must be >= 4, got {self.video_frames}")
        if self.fps < 1:
            raise FastslowError(f"synth: fps must be >= 1, got {self.fps}")
        if not 0.0 <= self.distractor_prob <= 1.0:
            raise FastslowError(f"synth: distractor_prob must be in [0, 1], got {self.distractor_prob}")
        for kinds, known in ((self.image_twins, scenes.IMAGE_TWINS), (self.video_twins, motion.VIDEO_TWINS)):
            bad = [k for k in kinds if k not in known] or sorted({k for k in kinds if kinds.count(k) > 1})
            if bad:
                raise FastslowError(f"synth: twin kinds {bad} not allowed; choose distinct ones of {list(known)}")


def _plan(cfg: SynthConfig, media: str) -> list[dict]:
    """Every item of one medium, split by split, group by group; all randomness is drawn here, sequentially."""
    if media == "image":
        splits = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test, UNCAPTIONED: cfg.n_uncaptioned}
        kinds, keys = ("original", *cfg.image_twins), scenes.group_keys()
        n_slots = cap.MAX_IMAGE_CAPTIONS
    else:
        splits = dict(zip(SPLITS, (cfg.n_train_videos, cfg.n_val_videos, cfg.n_test_videos)))
        kinds, keys = ("original", *cfg.video_twins), motion.group_keys()
        n_slots = cap.MAX_VIDEO_CAPTIONS
    keys_of = split_keys(keys, cfg.seed, media)
    items, group = [], 0
    # The uncaptioned images come last, with their own stream: the other splits stay as they were without them.
    for split_index, (split, n) in enumerate(splits.items()):
        # One stream per (medium, split): a split's first groups stay the same when its size changes.
        rng = np.random.default_rng([cfg.seed, 0 if media == "image" else 1, split_index])
        # A split's keys are used without repetition until exhausted, so no two groups of a split share a
        # caption (up to its number of keys: 210 test groups of images, 315 of videos).
        keys = keys_of[split]
        order = rng.permutation(len(keys))
        for g in range(math.ceil(n / len(kinds))):
            key = keys[order[g % len(keys)]]
            if media == "image":
                base = scenes.sample_scene(rng, key, cfg.distractor_prob)
            else:
                base = motion.sample_clip(rng, key)
            # Same slots for every twin, so the attribute swaps keep the word multiset.
            slots = [0] + sorted(rng.choice(np.arange(1, n_slots), cfg.captions_per_item - 1, replace=False).tolist())
            members = list(kinds[: min(len(kinds), n - g * len(kinds))])
            # Shuffled so a gallery's index order says nothing about which member is the original.
            for i in rng.permutation(len(members)):
                kind = members[i]
                recipe = (scenes.twin if media == "image" else motion.twin)(base, kind)
                if media == "image":
                    caps = recipe.captions(slots)
                else:
                    caps = recipe.captions([motion_slot(s) for s in slots])
                items.append(dict(split=split, group=group, twin=kind, recipe=recipe, captions=caps))
            group += 1
    for number, item in enumerate(items, start=1):
        item["name"] = f"{number:05d}" if media == "image" else f"v{number:05d}"
    return items


def motion_slot(index: int) -> tuple[int, int, str]:
    """The (template, verb style, article) of video caption slot `index` (0 is canonical)."""
    return cap.VIDEO_SLOTS[index]


def _render(task: tuple) -> int:
    """Render and write one group's files (runs in a worker); returns how many items it wrote."""
    media, directory, size, frames, fps, members = task
    for name, recipe in members:
        if media == "image":
            scenes.render_scene(recipe, size).save(os.path.join(directory, f"{name}.png"), optimize=False)
        else:
            motion.write_mp4(os.path.join(directory, f"{name}.mp4"), motion.render_clip(recipe, size, frames), fps)
    return len(members)


def _run(tasks: list[tuple], total: int, desc: str, progress: bool, workers: int) -> None:
    """Execute render tasks, in a spawn pool when workers > 1 (fork is unsafe beside torch/Ray threads)."""
    with tqdm(total=total, desc=desc, unit=desc[:-1], disable=not progress) as bar:
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                bar.update(_render(t))
            return
        with mp.get_context("spawn").Pool(workers) as pool:
            for n in pool.imap_unordered(_render, tasks, chunksize=4):
                bar.update(n)


def _tasks(items: list[dict], media: str, directory: str, cfg: SynthConfig) -> list[tuple]:
    by_group: dict[int, list] = {}
    for it in items:
        by_group.setdefault(it["group"], []).append((it["name"], it["recipe"]))
    size = cfg.image_size if media == "image" else cfg.video_size
    return [(media, directory, size, cfg.video_frames, cfg.fps, m) for m in by_group.values()]


def _prepare(out_dir: str, subdirs: list[str]) -> None:
    """Create the output folders; refuse a non-empty folder that is not an earlier synth output."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, "synth.json")):
        raise FastslowError(f"synth: {out_dir} is not empty and holds no synth.json; choose an empty folder")
    for sub in MEDIA_DIRS:
        path = os.path.join(out_dir, sub)
        if sub in subdirs:
            os.makedirs(path, exist_ok=True)
        # Rewriting an earlier output: drop its media files so no stale item outlives it.
        for name in os.listdir(path) if os.path.isdir(path) else ():
            if _GENERATED.match(name):
                os.remove(os.path.join(path, name))


def _dump(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.write("\n")


def _image_entries(images: list[dict]) -> list[dict]:
    """Karpathy-format entries of the captioned images, sentence ids counted across them."""
    entries, sentid = [], 0
    for it in images:
        sents = [{"raw": c, "tokens": cap.tokenize(c), "sentid": sentid + k} for k, c in enumerate(it["captions"])]
        entries.append({"filename": f"{it['name']}.png", "imgid": int(it["name"]), "split": it["split"],
                        "sentences": sents, "sentids": [s["sentid"] for s in sents], "group": it["group"],
                        "twin": it["twin"]})
        sentid += len(sents)
    return entries


def _write_images(images: list[dict], cfg: SynthConfig, out_dir: str, progress: bool, workers: int) -> str:
    """Render the captioned images and write their Karpathy-format JSON; returns its path."""
    directory = os.path.join(out_dir, "images")
    _run(_tasks(images, "image", directory, cfg), len(images), "images", progress, workers)
    path = os.path.join(directory, "dataset_synth.json")
    _dump(path, {"dataset": "synth", "images": _image_entries(images)})
    return path


def _write_videos(videos: list[dict], cfg: SynthConfig, out_dir: str, progress: bool, workers: int) -> list[str]:
    """Render the videos and write one VATEX-format JSON per split; returns their paths."""
    directory = os.path.join(out_dir, "videos")
    _run(_tasks(videos, "video", directory, cfg), len(videos), "videos", progress, workers)
    paths = []
    for split in SPLITS:
        rows = [{"videoID": it["name"], "enCap": it["captions"], "group": it["group"], "twin": it["twin"]}
                for it in videos if it["split"] == split]
        path = os.path.join(directory, f"vatex_{split}.json")
        _dump(path, rows)
        paths.append(path)
    return paths


def _count(summary: dict, images: list[dict], videos: list[dict], uncaptioned: list[dict]) -> None:
    """Add the per-split item and group counts to `summary`."""
    for media, its in (("images", images), ("videos", videos)):
        summary[media] = {s: sum(it["split"] == s for it in its) for s in SPLITS}
        summary[f"{media[:-1]}_groups"] = {s: len({it["group"] for it in its if it["split"] == s}) for s in SPLITS}
    if uncaptioned:
        summary["images"][UNCAPTIONED] = len(uncaptioned)


def _write_record(cfg: SynthConfig, out_dir: str, summary: dict, videos: list[dict]) -> str:
    """Write synth.json (the generator's parameters and counts); returns its path."""
    record = {
        "generator": "fastslow.synth",
        "format_version": FORMAT_VERSION,
        "config": asdict(cfg),
        "images": summary["images"],
        "videos": summary["videos"],
        "test_captions_seen_in_train": summary["test_captions_seen_in_train"],
        "video_codec": motion.video_codec() if videos else None,
        "vocabulary": sorted(cap.vocabulary()),
    }
    path = os.path.join(out_dir, "synth.json")
    _dump(path, record)
    return path


def write_dataset(cfg: SynthConfig, out_dir: str, progress: bool = True, workers: int = 1) -> dict:
    """Generate the whole dataset under out_dir; the content depends on cfg only, never on workers."""
    cfg.validate()
    if workers < 1:
        raise FastslowError(f"synth: workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    planned, videos = _plan(cfg, "image"), _plan(cfg, "video")
    images = [it for it in planned if it["split"] != UNCAPTIONED]
    uncaptioned = [it for it in planned if it["split"] == UNCAPTIONED]
    _prepare(out_dir, [d for d, its in (("images", images), ("videos", videos), ("images_uncaptioned", uncaptioned))
                       if its])
    summary: dict = {"out_dir": out_dir, "seed": cfg.seed, "files": {}}
    if images:
        summary["files"]["images"] = _write_images(images, cfg, out_dir, progress, workers)
    if uncaptioned:  # a bare folder of PNGs, read like any collection to index (fastslow/data/folder.py)
        directory = os.path.join(out_dir, "images_uncaptioned")
        _run(_tasks(uncaptioned, "image", directory, cfg), len(uncaptioned), "uncaptioned images", progress, workers)
        summary["files"]["images_uncaptioned"] = directory
    if videos:
        summary["files"]["videos"] = _write_videos(videos, cfg, out_dir, progress, workers)
    _count(summary, images, videos, uncaptioned)
    summary["test_captions_seen_in_train"] = {"images": caption_overlap(images), "videos": caption_overlap(videos)}
    summary["files"]["synth"] = _write_record(cfg, out_dir, summary, videos)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def generate(
    out_dir: str,
    seed: int = 0,
    n_train: int = 4000,
    n_val: int = 200,
    n_test: int = 500,
    n_train_videos: int = 1200,
    n_val_videos: int = 100,
    n_test_videos: int = 200,
    captions_per_item: int = 5,
    image_size: int = 96,
    video_size: int = 64,
    video_frames: int = 16,
    progress: bool = True,
    workers: int = 1,
) -> dict:
    """Generate the benchmark under out_dir and return a summary of what was written."""
    cfg = SynthConfig(
        seed=seed,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        n_train_videos=n_train_videos,
        n_val_videos=n_val_videos,
        n_test_videos=n_test_videos,
        captions_per_item=captions_per_item,
        image_size=image_size,
        video_size=video_size,
        video_frames=video_frames,
    )
    return write_dataset(cfg, out_dir, progress=progress, workers=workers)
