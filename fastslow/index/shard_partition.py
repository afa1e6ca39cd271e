"""Partitions that are whole shard files (webdataset tars, img2dataset Parquet): each is streamed once, by the
worker that decodes it, never by the driver, and handed on in chunks of at most `chunk` items, so a worker's
memory stays bounded however big the shard is.

A shard partition's output is one pair of files per chunk (errors, then embeddings) and, once every chunk is
written, a marker naming how many there are (`part-NNNNN.done.json`, written by the driver): a partition
without its marker reruns whole, as a row partition without its file does. Every item the shard holds ends up
in a chunk's items or errors: problems the reader reports (a truncated or empty shard, a key with no image, a
`.json` that is not JSON) and items that do not decode alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from fastslow import storage
from fastslow.data.decode import DecodeConfig
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import DecodeError
from fastslow.index.partition import EMBEDDINGS, ERRORS, decode_with_info


def shard_entry(shard: str, media: str | None, chunk: int, metadata_drop: list[str]) -> dict:
    """A shard partition of the plan: everything its worker needs (JSON; travels with the task)."""
    return {"shard": shard, "media": media, "chunk": int(chunk), "metadata_drop": list(metadata_drop)}


def is_shard_entry(entry) -> bool:
    return isinstance(entry, dict) and "shard" in entry


def kept_meta(meta: dict, drop: list[str]) -> dict:
    """The item's metadata without the fields `drop` names (large ones such as img2dataset's `exif`)."""
    return {k: v for k, v in meta.items() if k not in drop}


def open_shard(shard: str):
    """The reader of one shard file, by its extension."""
    if shard.lower().endswith(".parquet"):
        from fastslow.data.img2dataset_parquet import Img2DatasetParquetReader

        return Img2DatasetParquetReader([shard])
    from fastslow.data.webdataset import WebDatasetReader

    return WebDatasetReader([shard])


def _item(sample: Sample, drop: list[str], info: dict) -> dict:
    return {"id": sample.id, "media": sample.media, "uri": sample.uri, "captions": list(sample.captions),
            "offset": sample.offset, "size": sample.size, "meta": kept_meta(sample.meta, drop), **info}


class ShardChunks:
    """Decodes one shard partition chunk by chunk: `(items, errors, pixels, last)` for each chunk, in order."""

    def __init__(self, partition: int, entry: dict, cfg: DecodeConfig):
        self.partition, self.entry, self.cfg = int(partition), entry, cfg
        self.report = ReadReport(source=entry["shard"])
        self._reported = 0  # the report's problems already handed on in a chunk

    def _new_problems(self) -> list[dict]:
        fresh = self.report.problems[self._reported :]
        self._reported = len(self.report.problems)
        return [{"id": p.id, "uri": p.uri, "reason": p.reason, "shard": self.entry["shard"]} for p in fresh]

    def __iter__(self) -> Iterator[tuple[list[dict], list[dict], np.ndarray | None, bool]]:
        shard, media, drop = self.entry["shard"], self.entry.get("media"), self.entry.get("metadata_drop") or []
        items, errors, pixels = [], [], []
        for sample in open_shard(shard).shard_samples(shard, self.report):
            errors += self._new_problems()
            if media and sample.media != media:
                errors.append({"id": sample.id, "uri": sample.uri, "shard": shard,
                               "reason": f"not {'an image' if media == 'image' else 'a video'}"})
            else:
                try:
                    array, info = decode_with_info(sample, self.cfg)
                    pixels.append(array)
                    items.append(_item(sample, drop, info))
                except DecodeError as e:
                    errors.append({"id": sample.id, "uri": sample.uri, "shard": shard,
                                   "reason": str(e) or "undecodable"})
            if len(items) >= self.entry["chunk"]:
                yield items, errors, np.stack(pixels), False
                items, errors, pixels = [], [], []
        errors += self._new_problems()
        yield items, errors, (np.stack(pixels) if pixels else None), True


def chunk_files(build_dir: str, partition: int, chunk: int) -> tuple[str, str]:
    """(embeddings Parquet, errors JSONL) of one chunk of a shard partition."""
    name = f"part-{partition:05d}.chunk-{chunk:05d}"
    return storage.join(build_dir, EMBEDDINGS, f"{name}.parquet"), storage.join(build_dir, ERRORS, f"{name}.jsonl")


def done_file(build_dir: str, partition: int) -> str:
    return storage.join(build_dir, EMBEDDINGS, f"part-{partition:05d}.done.json")


def mark_done(build_dir: str, partition: int, chunks: int) -> None:
    """Record that all `chunks` chunks of the partition are written (after the last of them is)."""
    storage.write_text(done_file(build_dir, partition), json.dumps({"chunks": int(chunks)}))


def written_chunks(build_dir: str, partition: int) -> int | None:
    """How many chunks the finished shard partition has; None while it is not finished."""
    uri = done_file(build_dir, partition)
    if not storage.exists(uri):
        return None
    return int(json.loads(storage.read_text(uri))["chunks"])


class ChunkTracker:
    """Marks a shard partition done once its last chunk and every one before it are written, whatever order
    the writes finish in (chunks of one partition are written by different tasks)."""

    def __init__(self, build_dir: str):
        self.build_dir = build_dir
        self.seen: dict[int, set[int]] = {}
        self.total: dict[int, int] = {}

    def written(self, partition: int, chunk: int, chunks: int) -> None:
        """Chunk `chunk` of `partition` is written; `chunks` > 0 on the last chunk (their number), else 0."""
        if chunk < 0:
            return  # a row partition: its file is its own marker
        self.seen.setdefault(partition, set()).add(chunk)
        if chunks > 0:
            self.total[partition] = chunks
        total = self.total.get(partition)
        if total is not None and len(self.seen[partition]) == total:
            mark_done(self.build_dir, partition, total)
