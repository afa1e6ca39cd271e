"""One partition of an index build: decode its items, embed them with Fast, write its output. Ray-free.

The unit of work of a build is a partition: a fixed, sorted slice of the corpus whose output
(its errors, then its embeddings Parquet file: the file that marks it done) is written last and
in one piece, so a build killed at any point reruns only the partitions with no output file.
The local executor (`fastslow.index.build`) and the Ray Data stages (`actors.index_stages`) both
call these functions; only the transport between the steps differs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from fastslow import storage
from fastslow.data.decode import DecodeConfig, decode_image, decode_video_sample, media_info, read_sample_bytes
from fastslow.data.types import Sample
from fastslow.errors import DecodeError

EMBEDDINGS = "embeddings"
ERRORS = "errors"


@dataclass
class DecodedPartition:
    """A partition after decoding: its decodable items (with their media info), the rest as errors, the pixels
    of the decodable ones stacked in item order (None when there is none)."""

    partition: int
    items: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    pixels: np.ndarray | None = None
    chunk: int = -1  # a shard partition's chunk number (fastslow.index.shard_partition); -1: a row partition
    chunks: int = 0  # on a shard partition's last chunk: how many chunks it has


def partition_files(build_dir: str, partition: int) -> tuple[str, str]:
    """(embeddings Parquet, errors JSONL) of one partition."""
    name = f"part-{partition:05d}"
    return storage.join(build_dir, EMBEDDINGS, f"{name}.parquet"), storage.join(build_dir, ERRORS, f"{name}.jsonl")


def is_written(build_dir: str, partition: int, sharded: bool = False) -> bool:
    """Whether the partition is done: its embeddings file (written last) exists, or for a shard partition
    (`sharded`) the marker written once all its chunks are."""
    from fastslow.index.shard_partition import written_chunks

    if sharded:
        return written_chunks(build_dir, partition) is not None
    return storage.exists(partition_files(build_dir, partition)[0])


def decode_with_info(sample: Sample, cfg: DecodeConfig) -> tuple[np.ndarray, dict]:
    """The sample's pixels and its media info (media_info): an image's from its bytes, a video's as read while
    decoding (a video file is streamed by ranged reads, never read whole). Inline bytes are used as they are."""
    if sample.media == "image":
        data = read_sample_bytes(sample)
        return decode_image(data, cfg.image_size, cfg.fit), media_info(data, "image")
    if sample.media == "video":
        report: dict = {}
        return decode_video_sample(sample, cfg, report), media_info(report["info"], "video")
    raise DecodeError(f"unknown media type {sample.media!r}")


def decode_entry(partition: int, entry, cfg: DecodeConfig) -> Iterator[DecodedPartition]:
    """A plan entry decoded: a row partition in one piece, a shard partition (a dict) chunk by chunk."""
    from fastslow.index.shard_partition import ShardChunks, is_shard_entry

    if not is_shard_entry(entry):
        yield decode_partition(partition, entry, cfg)
        return
    chunk = 0
    for items, errors, pixels, last in ShardChunks(partition, entry, cfg):
        yield DecodedPartition(int(partition), items, errors, pixels, chunk, chunk + 1 if last else 0)
        chunk += 1


def decode_partition(partition: int, items: list[dict], cfg: DecodeConfig) -> DecodedPartition:
    """Decode a partition's items; an undecodable item becomes an error (id, uri, reason), never an exception.
    An unreachable store is not an item's fault: StorageUnavailableError stops the build (to be resumed)."""
    out, pixels = DecodedPartition(int(partition)), []
    for item in items:
        try:
            array, info = decode_with_info(Sample(id=item["id"], media=item["media"], uri=item["uri"], captions=[]),
                                           cfg)
        except DecodeError as e:
            out.errors.append({"id": item["id"], "uri": item["uri"], "reason": str(e) or "undecodable"})
            continue
        pixels.append(array)
        out.items.append({**item, **info})
    out.pixels = np.stack(pixels) if pixels else None
    return out


class PartitionEmbedder:
    """The Fast model loaded once (on the best device here), embedding a partition's pixels in mini-batches."""

    def __init__(self, checkpoint: str, batch_size: int = 64):
        from fastslow.devices import best_device
        from fastslow.models.checkpoint import load_model
        from fastslow.models.fast import FastEncoder

        self.device = best_device()
        self.model = load_model(checkpoint, FastEncoder, visual_only=True).eval().to(self.device)
        self.batch_size = batch_size

    def embed(self, pixels: np.ndarray | None) -> np.ndarray:
        """(N, D) float32 unit vectors of the N stacked items; (0, 0) for none."""
        import torch

        from fastslow.devices import autocast

        if pixels is None or not len(pixels):
            return np.zeros((0, 0), np.float32)
        with torch.inference_mode(), autocast(self.device):
            parts = [self.model.encode_visual(torch.from_numpy(pixels[i : i + self.batch_size])).float().cpu()
                     for i in range(0, len(pixels), self.batch_size)]
        return torch.cat(parts).numpy().astype(np.float32)


def _schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("uri", pa.string()), ("media", pa.string()), ("caption", pa.string()),
                      ("width", pa.int64()), ("height", pa.int64()), ("duration", pa.float64()),
                      ("offset", pa.int64()), ("size", pa.int64()), ("metadata", pa.string()),
                      ("embedding", pa.list_(pa.float32()))])


def write_partition(build_dir: str, partition: int, items: list[dict], errors: list[dict],
                    vectors: np.ndarray, chunk: int = -1, chunks: int = 0) -> dict:
    """Write the partition's (or a shard partition's chunk's) errors, then its embeddings (the file that marks
    it done); its counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fastslow.index.shard_partition import chunk_files

    emb_uri, err_uri = (partition_files(build_dir, int(partition)) if chunk < 0
                        else chunk_files(build_dir, int(partition), int(chunk)))
    storage.write_text(err_uri, "".join(json.dumps(e) + "\n" for e in errors))
    columns = {"id": [i["id"] for i in items], "uri": [i["uri"] for i in items],
               "media": [i["media"] for i in items],
               "caption": [i["captions"][0] if i["captions"] else None for i in items],
               "width": [i.get("width") for i in items], "height": [i.get("height") for i in items],
               "duration": [i.get("duration") for i in items],
               "offset": [i.get("offset") for i in items], "size": [i.get("size") for i in items],
               "metadata": [json.dumps(i["meta"], default=str) if i.get("meta") else None for i in items],
               "embedding": list(vectors[: len(items)])}
    buf = io.BytesIO()
    pq.write_table(pa.table(columns, schema=_schema()), buf)
    storage.write_bytes(emb_uri, buf.getvalue())
    return {"partition": int(partition), "indexed": len(items), "errors": len(errors), "chunk": int(chunk),
            "chunks": int(chunks)}


def run_partition(build_dir: str, partition: int, entry, cfg: DecodeConfig, embedder: PartitionEmbedder) -> dict:
    """Decode, embed and write one partition (a shard partition chunk by chunk) in this process; its counts."""
    from fastslow.index.shard_partition import ChunkTracker

    tracker, counts = ChunkTracker(build_dir), {"partition": int(partition), "indexed": 0, "errors": 0}
    for decoded in decode_entry(partition, entry, cfg):
        done = write_partition(build_dir, partition, decoded.items, decoded.errors, embedder.embed(decoded.pixels),
                               decoded.chunk, decoded.chunks)
        tracker.written(partition, done["chunk"], done["chunks"])
        counts["indexed"] += done["indexed"]
        counts["errors"] += done["errors"]
    return counts


def read_partition(build_dir: str, partition: int, sharded: bool = False, columns: list[str] | None = None):
    """A written partition's (pyarrow table with its embeddings, errors); a shard partition's (`sharded`) from
    all its chunks. `columns`: only those columns of the table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fastslow.index.shard_partition import chunk_files, written_chunks

    files = ([chunk_files(build_dir, partition, c) for c in range(written_chunks(build_dir, partition))] if sharded
             else [partition_files(build_dir, partition)])
    tables, errors = [], []
    for emb_uri, err_uri in files:
        tables.append(pq.read_table(pa.BufferReader(storage.read_bytes(emb_uri)), columns=columns))
        errors += [json.loads(line) for line in storage.read_text(err_uri).splitlines() if line.strip()]
    return pa.concat_tables(tables), errors
