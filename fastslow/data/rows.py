"""A split as plain rows, decoded row by row, and back into a `LoadedSplit`: the steps the Ray Data loader of
training (actors/training_data.py) distributes over tasks and workers.

Every sample stays a row: a decode failure becomes the row's `error` instead of an exception, so the
driver can report it (nothing lost silently) and train on the rest.
"""

from __future__ import annotations

import json

import numpy as np

from fastslow.data.decode import DecodeConfig, decode_sample
from fastslow.data.holdout import with_splits
from fastslow.data.loaded import LoadedSplit, MediaFilter, empty_shape
from fastslow.data.registry import open_dataset
from fastslow.data.source import DataConfig
from fastslow.data.types import ReadReport, Sample
from fastslow.errors import DecodeError, FastslowError


def sample_rows(data: DataConfig, split: str | None) -> tuple[list[dict], ReadReport, str]:
    """The split's samples as plain rows (read on the driver: annotation files are small), its report, its media."""
    reader = with_splits(open_dataset(data.path, format=data.format, media_root=data.media_root), data)
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

