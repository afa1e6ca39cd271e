"""Ray Data stages of indexing, one partition of items per row: decode (CPU tasks), embed (an actor pool
holding the Fast model), write (the partition's Parquet file and its errors).

The unit of work is a partition: a fixed, sorted slice of the corpus whose output file is
written last and in one piece, so a build killed at any point reruns only the partitions
with no output file.
"""

from __future__ import annotations

import io
import json

import numpy as np

from fastslow import storage
from fastslow.data.decode import DecodeConfig, decode_image, decode_video, media_info, read_sample_bytes
from fastslow.data.types import Sample
from fastslow.errors import DecodeError

EMBEDDINGS = "embeddings"
ERRORS = "errors"


def _schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("uri", pa.string()), ("media", pa.string()), ("caption", pa.string()),
                      ("width", pa.int64()), ("height", pa.int64()), ("duration", pa.float64()),
                      ("embedding", pa.list_(pa.float32()))])


def partition_files(build_dir: str, partition: int) -> tuple[str, str]:
    """(embeddings Parquet, errors JSONL) of one partition."""
    name = f"part-{partition:05d}"
    return storage.join(build_dir, EMBEDDINGS, f"{name}.parquet"), storage.join(build_dir, ERRORS, f"{name}.jsonl")


def decode_partition(batch: dict, cfg: DecodeConfig) -> dict:
    """map_batches (batch_size=1): a partition's items -> stacked pixels of the decodable ones, and the rest as errors."""
    out = {"partition": [], "items": [], "errors": [], "pixels": []}
    for partition, items_json in zip(batch["partition"], batch["items"]):
        kept, errors, pixels = [], [], []
        for item in json.loads(items_json):
            sample = Sample(id=item["id"], media=item["media"], uri=item["uri"], captions=[])
            try:
                data = read_sample_bytes(sample)
                if item["media"] == "image":
                    pixels.append(decode_image(data, cfg.image_size))
                elif item["media"] == "video":
                    pixels.append(decode_video(data, cfg.num_frames, cfg.image_size))
                else:
                    raise DecodeError(f"unknown media type {item['media']!r}")
            except DecodeError as e:
                errors.append({"id": item["id"], "uri": item["uri"], "reason": str(e) or "undecodable"})
                continue
            kept.append({**item, **media_info(data, item["media"])})
        out["partition"].append(int(partition))
        out["items"].append(json.dumps(kept))
        out["errors"].append(json.dumps(errors))
        out["pixels"].append(_npy(np.stack(pixels)) if pixels else b"")
    return {k: np.array(v, dtype=object) if k != "partition" else np.array(v) for k, v in out.items()}


def _npy(a: np.ndarray) -> bytes:
    # Pixels travel as .npy bytes: a partition's items may be images or videos, of any count.
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


class FastEmbedder:
    """Actor of the embedding pool: loads the Fast checkpoint once, embeds each partition in mini-batches."""

    def __init__(self, checkpoint: str, batch_size: int = 64):
        from fastslow.devices import best_device
        from fastslow.env import apply_local_safety_env
        from fastslow.models.fast import FastModel
        from fastslow.models.checkpoint import load_model

        apply_local_safety_env()
        self.device = best_device()
        self.model = load_model(checkpoint, FastModel).eval().to(self.device)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        import torch

        from fastslow.devices import autocast

        embeddings = []
        for blob in batch["pixels"]:
            if not blob:
                embeddings.append(b"")
                continue
            pixels = np.load(io.BytesIO(blob), allow_pickle=False)
            with torch.inference_mode(), autocast(self.device):
                parts = [self.model.encode_visual(torch.from_numpy(pixels[i : i + self.batch_size])).float().cpu()
                         for i in range(0, len(pixels), self.batch_size)]
            embeddings.append(_npy(torch.cat(parts).numpy().astype(np.float32)))
        return {"partition": batch["partition"], "items": batch["items"], "errors": batch["errors"],
                "embeddings": np.array(embeddings, dtype=object)}


def write_partition(batch: dict, build_dir: str) -> dict:
    """map_batches (batch_size=1): write the partition's errors, then its embeddings (the file that marks it done)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts = {"partition": [], "indexed": [], "errors": []}
    for partition, items_json, errors_json, blob in zip(batch["partition"], batch["items"], batch["errors"],
                                                        batch["embeddings"]):
        items, errors = json.loads(items_json), json.loads(errors_json)
        vectors = np.load(io.BytesIO(blob), allow_pickle=False) if blob else np.zeros((0, 0), np.float32)
        emb_uri, err_uri = partition_files(build_dir, int(partition))
        storage.write_text(err_uri, "".join(json.dumps(e) + "\n" for e in errors))
        columns = {"id": [i["id"] for i in items], "uri": [i["uri"] for i in items],
                   "media": [i["media"] for i in items],
                   "caption": [i["captions"][0] if i["captions"] else None for i in items],
                   "width": [i.get("width") for i in items], "height": [i.get("height") for i in items],
                   "duration": [i.get("duration") for i in items], "embedding": list(vectors[: len(items)])}
        table = pa.table(columns, schema=_schema())
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(emb_uri, buf.getvalue())
        counts["partition"].append(int(partition))
        counts["indexed"].append(len(items))
        counts["errors"].append(len(errors))
    return {k: np.array(v) for k, v in counts.items()}
