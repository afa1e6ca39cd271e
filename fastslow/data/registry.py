"""The reader interface shared by every dataset format, and `open_dataset`, which picks a reader for a path."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator

from fastslow import storage
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import FastslowError

FORMATS = ("karpathy", "vatex", "webdataset", "img2dataset_parquet", "manifest", "folder")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")


class DatasetReader(ABC):
    """Yields a dataset's `Sample`s and accounts for every index entry in a `ReadReport`."""

    source: str = ""

    @abstractmethod
    def samples(self, split: str | None, report: ReadReport) -> Iterator[Sample]:
        """Samples of `split` (None: all); malformed entries are skipped into `report`."""

    def shards(self) -> list[str] | None:
        """Formats whose items lie inside big shard files (tars, Parquet with media bytes): the shard URIs, each
        read whole by one worker (`shard_samples`), never by the driver. None: items are listed up front."""
        return None

    def shard_samples(self, shard: str, report: ReadReport) -> Iterator[Sample]:
        """The samples of one shard (of `shards()`), every item counted in `report`."""
        raise NotImplementedError(f"{type(self).__name__} is not sharded")

    def splits(self) -> list[str]:
        """Split names of this dataset; empty when the format carries no split information."""
        return []

    def check_split(self, split: str | None) -> None:
        """Raise if `split` cannot be asked of this dataset."""
        if split is None:
            return
        known = self.splits()
        if not known:
            raise FastslowError(f"{self.source} has no split information: {split!r} cannot be read; set that "
                                f"split to null to read every item (data.test_split=null, data.train_split=null, "
                                f"data.val_split=null; fastslow eval: --split all; fastslow index: split=null). "
                                f"Training holds out a data.val_fraction share of such a dataset by a hash of the "
                                f"id as data.val_split, the rest is data.train_split")
        if split not in known:
            raise FastslowError(f"{self.source}: no split {split!r}; splits: {', '.join(known)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"


class ShardedReader(DatasetReader):
    """A format whose items lie in shard files (`shards()`, each read by `shard_samples`); no splits. Reading it
    all (`samples`) keeps the first item of an id and reports the same id in a later shard."""

    def __init__(self, shard_uris: list[str], what: str):
        if not shard_uris:
            raise FastslowError(f"{what} reader given no shards")
        self.shard_uris = list(shard_uris)
        self.source = shard_uris[0] if len(shard_uris) == 1 else f"{shard_uris[0]} (+{len(shard_uris) - 1} shards)"

    def shards(self) -> list[str]:
        return list(self.shard_uris)

    def samples(self, split: str | None, report: ReadReport) -> Iterator[Sample]:
        self.check_split(split)
        seen: set[str] = set()
        for shard in self.shard_uris:
            for sample in self.shard_samples(shard, report):
                if sample.id in seen:
                    report.skip(sample.id, sample.uri, "duplicate id (an earlier shard has this key)")
                    continue
                seen.add(sample.id)
                yield sample


def split_from_name(name: str) -> str:
    """A split name from a file name: train, val, test, else `all`."""
    low = storage.basename(name).lower()
    for word, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if word in low:
            return split
    return "all"


def parse_json(uri: str):
    """Read and parse a whole JSON file; a missing or malformed file is a FastslowError naming it."""
    text = storage.read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FastslowError(f"{uri}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None


def _default_root(folder: str, sub: str, media_root: str | None) -> str:
    if media_root is not None:
        return media_root
    candidate = storage.join(folder, sub)
    return candidate if storage.is_dir(candidate) else folder


def _vatex_split_files(files: list[str]) -> dict[str, str]:
    """split -> file; files whose names give the same split are keyed by their file stem instead."""
    by_split: dict[str, list[str]] = {}
    for f in files:
        by_split.setdefault(split_from_name(f), []).append(f)
    out = {}
    for split, group in by_split.items():
        if len(group) == 1:
            out[split] = group[0]
        else:
            for f in group:
                out[os.path.splitext(storage.basename(f))[0]] = f
    return out


def _karpathy(json_uri: str, media_root: str | None, parsed=None) -> DatasetReader:
    from fastslow.data.karpathy import KarpathyReader

    reader = KarpathyReader(json_uri, _default_root(storage.parent(json_uri), "images", media_root))
    if parsed is not None:
        reader.set_index(parsed)
    return reader


def _vatex(files: list[str], media_root: str | None, parsed=None) -> DatasetReader:
    from fastslow.data.vatex import VatexReader

    split_files = _vatex_split_files(files)
    reader = VatexReader(split_files, _default_root(storage.parent(files[0]), "videos", media_root))
    if parsed is not None:
        reader.set_index(next(iter(split_files)), parsed)
    return reader


def _only(found: list[str], what: str, path: str) -> str:
    if len(found) > 1:
        names = ", ".join(storage.basename(f) for f in found)
        raise FastslowError(f"{path}: several {what} files ({names}); name one of them")
    return found[0]


def _holds_media(path: str, top_level: list[str]) -> bool:
    """Whether a folder holds image or video files (at its top level, else anywhere below)."""
    from fastslow.data.decode import media_from_extension

    if any(media_from_extension(f) for f in top_level):
        return True
    return any(media_from_extension(f) for f in storage.list_files(path))


def _open_dir(path: str, fmt: str, media_root: str | None) -> DatasetReader:
    from fastslow.data.manifest import ManifestReader
    from fastslow.data.webdataset import WebDatasetReader

    files = storage.list_files(path, recursive=False)
    names = {f: storage.basename(f).lower() for f in files}
    karpathy = [f for f in files if names[f].startswith("dataset_") and names[f].endswith(".json")]
    vatex = [f for f in files if names[f].startswith("vatex_") and names[f].endswith(".json")]
    tars = [f for f in files if names[f].endswith(".tar")]
    manifests = [f for f in files if names[f].endswith(MANIFEST_SUFFIXES)]
    if fmt in ("auto", "karpathy") and karpathy:
        return _karpathy(_only(karpathy, "dataset_*.json", path), media_root)
    if fmt in ("auto", "vatex") and vatex:
        return _vatex(vatex, media_root)
    if fmt in ("auto", "webdataset") and tars:
        return WebDatasetReader(tars)
    if fmt in ("auto", "img2dataset_parquet") and manifests:
        from fastslow.data.img2dataset_parquet import Img2DatasetParquetReader, is_img2dataset_parquet

        # img2dataset's parquet layout: image bytes in the files. Its other layouts write metadata-only Parquet
        # beside their tars or folders, which are not items. Only the first file's footer is read: a collection
        # has thousands of shards (one request or more each on S3); a stray file is reported when read.
        shards = [f for f in manifests if names[f].endswith(".parquet")]
        if shards and is_img2dataset_parquet(shards[0]):
            return Img2DatasetParquetReader(shards)
    if fmt == "manifest" and manifests:
        return ManifestReader(_only(manifests, "manifest", path), media_root)
    if fmt == "folder" or (fmt == "auto" and _holds_media(path, files)):
        from fastslow.data.folder import FolderReader

        return FolderReader(path)
    wanted = {
        "auto": "dataset_*.json, vatex_*.json, *.tar or image/video",
        "karpathy": "dataset_*.json",
        "vatex": "vatex_*.json",
        "webdataset": "*.tar",
        "img2dataset_parquet": "*.parquet with key and image columns",
        "manifest": "*.csv, *.jsonl or *.parquet",
    }[fmt]  # auto: a folder holding only a manifest must name it (--format manifest or the file)
    raise FastslowError(f"{path}: folder holds no {wanted} files")


def _open_json(path: str, fmt: str, media_root: str | None) -> DatasetReader:
    parsed = parse_json(path)
    if fmt == "karpathy" or (fmt == "auto" and isinstance(parsed, dict) and "images" in parsed):
        return _karpathy(path, media_root, parsed)
    first = parsed[0] if isinstance(parsed, list) and parsed else None
    if fmt == "vatex" or (fmt == "auto" and isinstance(first, dict) and "videoID" in first):
        return _vatex([path], media_root, parsed)
    raise FastslowError(
        f"{path}: JSON is neither Karpathy ({{'images': [...]}}) nor VATEX ([{{'videoID', 'enCap'}}]); "
        f"known formats: {', '.join(FORMATS)}"
    )


def open_dataset(path: str, format: str = "auto", media_root: str | None = None) -> DatasetReader:
    """A reader for a dataset file or folder (local or s3://), its format given or detected (`auto`).

    auto: a Karpathy or VATEX `.json` by content; a folder with `dataset_*.json` (Karpathy, images in
    `media_root`, else `<folder>/images` if present, else the folder), with `vatex_*.json` (VATEX, one
    split per file, videos in `media_root`, else `<folder>/videos`, else the folder), with `*.tar`
    (webdataset) or with `*.parquet` holding `key` and image columns (img2dataset's parquet layout); else a
    bare folder of images and videos (`folder`: ids are relative paths, captions from sidecar `.txt` files,
    metadata from sidecar `.json`: img2dataset's files layout); a `.tar` shard; an img2dataset `.parquet`
    shard; a `.csv`/`.jsonl`/`.parquet` manifest; a brace pattern of `.tar` or `.parquet` shard names.
    """
    from fastslow.data.manifest import ManifestReader
    from fastslow.data.webdataset import WebDatasetReader

    if format != "auto" and format not in FORMATS:
        raise FastslowError(f"{format!r}: unknown dataset format; known: auto, {', '.join(FORMATS)}")
    low = path.lower().rstrip("/")
    from fastslow.data.members import expand_braces, has_braces

    if has_braces(path):  # shard names as webdataset and img2dataset write them: a missing shard is reported
        shards = expand_braces(path)
        if format in ("auto", "img2dataset_parquet") and all(s.lower().endswith(".parquet") for s in shards):
            from fastslow.data.img2dataset_parquet import Img2DatasetParquetReader

            return Img2DatasetParquetReader(shards)
        if format not in ("auto", "webdataset") or not all(s.lower().endswith(".tar") for s in shards):
            raise FastslowError(f"{path}: a brace pattern must name .tar shards (webdataset) or .parquet shards "
                                f"(img2dataset_parquet)")
        return WebDatasetReader(shards)
    if low.endswith(".json"):
        if format not in ("auto", "karpathy", "vatex"):
            raise FastslowError(f"{path}: a .json file cannot be read as {format}")
        return _open_json(path, format, media_root)
    if low.endswith(".tar") and format in ("auto", "webdataset"):
        if not storage.exists(path):
            raise FastslowError(f"{path}: no such file")
        return WebDatasetReader([path])
    if low.endswith(".parquet") and format in ("auto", "img2dataset_parquet"):
        from fastslow.data.img2dataset_parquet import Img2DatasetParquetReader, is_img2dataset_parquet

        if format == "img2dataset_parquet" or is_img2dataset_parquet(path):
            return Img2DatasetParquetReader([path])
    if low.endswith(MANIFEST_SUFFIXES) and format in ("auto", "manifest"):
        return ManifestReader(path, media_root)
    if storage.is_dir(path):
        return _open_dir(path, format, media_root)
    if not storage.exists(path):
        raise FastslowError(f"{path}: no such file or folder")
    raise FastslowError(f"{path}: unknown dataset format; known: {', '.join(FORMATS)}")
