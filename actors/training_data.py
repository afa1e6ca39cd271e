"""Ray Data loading of a training split: the split's rows decoded on CPU tasks (fastslow/data/rows.py holds
the steps), materialised for the trainer to shard across its workers."""

from __future__ import annotations

from fastslow.data.decode import DecodeConfig
from fastslow.data.rows import decode_rows, sample_rows
from fastslow.data.source import DataConfig
from fastslow.errors import FastslowError

ROWS_PER_BLOCK = 64  # small blocks: decoding spreads over every CPU even for small datasets


def read_split(data: DataConfig, split: str | None, image_size: int, fit: str = "crop"):
    """(Ray Dataset of the decoded items, ReadReport with every failure, media) of one split.

    The dataset is materialised: the trainer shards it across workers, and the failures are
    counted once, here.
    """
    import ray.data

    rows, report, media = sample_rows(data, split)
    if not rows:
        raise FastslowError(f"{data.path}: split {split!r} has no items ({report.summary()})")
    cfg = DecodeConfig(image_size=image_size, num_frames=data.num_frames, fit=fit)
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
