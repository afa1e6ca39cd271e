"""Ray Data stages of indexing, one partition of items per row: decode (CPU tasks), embed (an actor pool holding
the Fast model), write (a small actor pool writing the partition's Parquet file and its errors).

Each stage only carries a partition between Ray Data rows and the core's partition steps
(`fastslow.index.partition`), which the local executor runs in one process: pixels and vectors
travel as .npy bytes (a partition's items may be images or videos, of any count), items and
errors as JSON text.
"""

from __future__ import annotations

import io
import json

import numpy as np

from fastslow.data.decode import DecodeConfig
from fastslow.index.partition import PartitionEmbedder, decode_entry, write_partition


def _npy(a: np.ndarray | None) -> bytes:
    if a is None:
        return b""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _array(blob: bytes) -> np.ndarray | None:
    return np.load(io.BytesIO(blob), allow_pickle=False) if blob else None


def decode_stage(batch: dict, cfg: DecodeConfig):
    """map_batches (batch_size=1), a generator: a partition's items -> stacked pixels of the decodable ones, and
    the rest as errors; a shard partition (streamed here, in the task) one chunk at a time, so a big shard never
    sits in memory whole."""
    for partition, entry_json in zip(batch["partition"], batch["items"]):
        for decoded in decode_entry(int(partition), json.loads(entry_json), cfg):
            yield {"partition": np.array([decoded.partition]), "chunk": np.array([decoded.chunk]),
                   "chunks": np.array([decoded.chunks]),
                   "items": np.array([json.dumps(decoded.items)], dtype=object),
                   "errors": np.array([json.dumps(decoded.errors)], dtype=object),
                   "pixels": np.array([_npy(decoded.pixels)], dtype=object)}


class FastEmbedder:
    """Actor of the embedding pool: loads the Fast checkpoint once, embeds each partition in mini-batches."""

    def __init__(self, checkpoint: str, batch_size: int = 64):
        self.embedder = PartitionEmbedder(checkpoint, batch_size)

    def __call__(self, batch: dict) -> dict:
        embeddings = [_npy(self.embedder.embed(pixels)) if (pixels := _array(blob)) is not None else b""
                      for blob in batch["pixels"]]
        return {"partition": batch["partition"], "chunk": batch["chunk"], "chunks": batch["chunks"],
                "items": batch["items"], "errors": batch["errors"], "embeddings": np.array(embeddings, dtype=object)}


def write_stage(batch: dict, build_dir: str) -> dict:
    """map_batches (batch_size=1): write the partition's errors, then its embeddings (the file that marks it done)."""
    counts = {"partition": [], "indexed": [], "errors": [], "chunk": [], "chunks": []}
    for partition, chunk, chunks, items_json, errors_json, blob in zip(
            batch["partition"], batch["chunk"], batch["chunks"], batch["items"], batch["errors"], batch["embeddings"]):
        vectors = _array(blob)
        done = write_partition(build_dir, int(partition), json.loads(items_json), json.loads(errors_json),
                               vectors if vectors is not None else np.zeros((0, 0), np.float32), int(chunk),
                               int(chunks))
        for k, column in counts.items():
            column.append(done[k])
    return {k: np.array(v) for k, v in counts.items()}


class PartitionWriter:
    """Actor of the writing pool: `write_stage` in a process that lives as long as the build. Not a task per
    partition: where the embedding actors hold every CPU of a node (the `auto` pool on a CPU machine), Ray keeps no
    idle worker beyond the node's CPUs, so each write task would start a fresh worker process, seconds of CPU taken
    from the embedding each time."""

    def __init__(self, build_dir: str):
        self.build_dir = build_dir

    def __call__(self, batch: dict) -> dict:
        return write_stage(batch, self.build_dir)
