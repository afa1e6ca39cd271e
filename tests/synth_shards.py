"""The tiny synthetic images as an img2dataset collection (so a model trained on them answers queries
meaningfully), written by tests/img2dataset_fixtures.py's writer: the layout's shards with `{shard}.parquet`
and `{shard}_stats.json` beside each, as img2dataset writes them."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time

from img2dataset_fixtures import SIZE_FIELDS, Written, compute_key, exif_json, write_shard, write_stats
from PIL import Image


def img2dataset_meta(key: str, url: str, caption: str, image: bytes) -> dict:
    """The fields img2dataset writes for a successful sample (the image as downloaded is the one written)."""
    with Image.open(io.BytesIO(image)) as img:
        width, height = img.size
    return {"caption": caption, "url": url, "key": key, "status": "success", "error_message": None,
            **dict(zip(SIZE_FIELDS, (width, height, width, height))), "exif": exif_json(image),
            "sha256": hashlib.sha256(image).hexdigest()}


def failed_meta(key: str, url: str, caption: str) -> dict:
    """A sample img2dataset could not download: its input columns, status and error (in the Parquet only)."""
    return {"caption": caption, "url": url, "key": key, "status": "failed_to_download",
            "error_message": "HTTP Error 404: Not Found", **dict.fromkeys((*SIZE_FIELDS, "exif", "sha256"))}


def synth_as_webdataset(images_dir: str, out_dir: str, shards: int, layout: str = "webdataset",
                        failed_per_shard: int = 0) -> dict[str, dict]:
    """Every image of the Karpathy file in `images_dir` (its first caption, re-encoded as JPEG) in `shards` shards
    under `out_dir`, in img2dataset's `layout`, with `failed_per_shard` failed downloads each; {key: {"jpeg",
    "caption", "url", "shard"}} of the successful samples."""
    with open(os.path.join(images_dir, "dataset_synth.json")) as f:
        entries = json.load(f)["images"]
    os.makedirs(out_dir, exist_ok=True)
    per_shard = -(-len(entries) // shards) + failed_per_shard
    written = Written(out_dir, layout, per_shard)
    out = {}
    for shard in range(shards):
        name, oom, results = f"{shard:05d}", math.ceil(math.log10(per_shard)), []
        for row, entry in enumerate(entries[shard * (per_shard - failed_per_shard):][: per_shard - failed_per_shard]):
            with open(os.path.join(images_dir, entry.get("filepath", ""), entry["filename"]), "rb") as f:
                jpeg = _as_jpeg(f.read())
            key, caption = compute_key(row, shard, oom, 5), entry["sentences"][0]["raw"]
            url = f"https://example.com/synth/{entry['filename']}"
            results.append((key, jpeg, caption, img2dataset_meta(key, url, caption, jpeg)))
            out[key] = {"jpeg": jpeg, "caption": caption, "url": url, "shard": name}
        for i in range(failed_per_shard):
            key = compute_key(per_shard - failed_per_shard + i, shard, oom, 5)
            results.append((key, None, "a lost picture", failed_meta(key, f"https://example.com/gone/{key}.jpg",
                                                                     "a lost picture")))
        write_shard(written, name, results)
        write_stats(out_dir, name, [meta for *_, meta in results], time.time(), time.time())
    return out


def _as_jpeg(data: bytes) -> bytes:
    """img2dataset re-encodes every image it downloads (encode_format jpg)."""
    out = io.BytesIO()
    with Image.open(io.BytesIO(data)) as img:
        img.convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()
