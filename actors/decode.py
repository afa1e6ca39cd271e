"""Ray Data: a dataset split's samples decoded on CPU tasks, and back into a `LoadedSplit` on a worker.

Every sample stays a row: a decode failure becomes the row's `error` instead of an exception, so
the driver can report it (nothing lost silently) and train or index on the rest.
"""

from __future__ import annotations

import json

import numpy as np

from fastslow.data.source import DataConfig
from fastslow.data.decode import DecodeConfig, decode_sample
from fastslow.data.loaded import LoadedSplit, MediaFilter, empty_shape
from fastslow.data.registry import open_dataset
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import DecodeError, FastslowError

ROWS_PER_BLOCK = 64  # small blocks: decoding spreads over every CPU even for small datasets


def sample_rows(data: DataConfig, split: str | None) -> tuple[list[dict], ReadReport, str]:
    """The split's samples as plain rows (read on the driver: annotation files are small), its report, its media."""
    reader = open_dataset(data.path, format=data.format, media_root=data.media_root)
    name = f"{reader.source} [{split or 'all'}]"
    report = ReadReport(source=name)
    chosen = MediaFilter(reader.samples(split, report), data.media, report, name)
    # Captions as JSON text and inline bytes with a flag: plain Arrow columns (lists of lists and
    # nullable binaries do not survive Ray Data's batch conversions intact).
    rows = [{"id": s.id, "media": s.media, "uri": s.uri, "captions": json.dumps(list(s.captions)),
             "inline": s.data is not None, "data": s.data or b""} for s in chosen]
    return rows, report, chosen.media or "image"


def decode_rows(batch: dict, cfg: DecodeConfig, media: str) -> dict:
    """map_batches function: add `pixels` (zeros where decoding failed) and `error` ("" when it worked)."""
    pixels, errors = [], []
    blank = np.zeros(empty_shape(media, cfg)[1:], dtype=np.uint8)
    for i in range(len(batch["id"])):
        sample = Sample(id=str(batch["id"][i]), media=str(batch["media"][i]), uri=str(batch["uri"][i]), captions=[],
                        data=bytes(batch["data"][i]) if batch["inline"][i] else None)
        try:
            pixels.append(decode_sample(sample, cfg))
            errors.append("")
        except DecodeError as e:
            pixels.append(blank)
            errors.append(str(e) or "undecodable")
    out = {k: v for k, v in batch.items() if k not in ("data", "inline")}
    out["pixels"] = np.stack(pixels)
    out["error"] = np.array(errors, dtype=object)
    return out


def read_split(data: DataConfig, split: str | None, image_size: int):
    """(Ray Dataset of the decoded items, ReadReport with every failure, media) of one split.

    The dataset is materialised: the trainer shards it across workers, and the failures are
    counted once, here.
    """
    import ray.data

    rows, report, media = sample_rows(data, split)
    if not rows:
        raise FastslowError(f"{data.path}: split {split!r} has no items ({report.summary()})")
    cfg = DecodeConfig(image_size=image_size, num_frames=data.num_frames)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // ROWS_PER_BLOCK))
    ds = ds.map_batches(decode_rows, fn_kwargs={"cfg": cfg, "media": media}, batch_size=16).materialize()
    failed = ds.filter(lambda r: r["error"] != "").select_columns(["id", "uri", "error"]).take_all()
    for r in failed:
        report.skip(r["id"], r["uri"], r["error"])
    report.used = len(rows) - len(failed)
    if not report.balanced:
        raise RuntimeError(f"read report does not balance: {report.summary()}")
    if report.used == 0:
        raise FastslowError(f"{data.path}: split {split!r} has no usable items ({report.summary()})")
    good = ds.filter(lambda r: r["error"] == "").drop_columns(["error"]).materialize()
    return good, report, media


def split_from_rows(batches, media: str) -> LoadedSplit:
    """A worker's shard (an iterator of numpy batches of decoded rows) as an in-memory LoadedSplit."""
    ids, uris, pixels, captions = [], [], [], []
    for batch in batches:
        ids += [str(i) for i in batch["id"]]
        uris += [str(u) for u in batch["uri"]]
        pixels.append(np.asarray(batch["pixels"], dtype=np.uint8))
        captions += [json.loads(caps) for caps in batch["captions"]]
    report = ReadReport(source="ray dataset shard", read=len(ids), used=len(ids))
    if not ids:
        raise FastslowError("this worker's shard of the training data is empty (more workers than items?)")
    return LoadedSplit(media=media, ids=ids, uris=uris, pixels=np.concatenate(pixels), captions=captions,
                       report=report)

