"""The tiny synthetic images as an img2dataset collection in its webdataset layout (so a model trained on them
answers queries meaningfully): `{shard}.tar` of `{key}.jpg`, `{key}.json`, `{key}.txt`, with `{shard}.parquet`
and `{shard}_stats.json` beside each, written the way img2dataset's own writer writes them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time

from PIL import Image


def img2dataset_key(index: int, shard: int, per_shard: int, shard_digits: int = 5) -> str:
    """img2dataset's compute_key: (10**oom_sample_per_shard) * shard + index, zero padded."""
    oom = len(str(per_shard - 1)) if per_shard > 1 else 1
    return f"{10 ** oom * shard + index:0{oom + shard_digits}d}"


def write_tar_sample(tar: tarfile.TarFile, key: str, sample: dict[str, bytes]) -> None:
    """webdataset's TarWriter: one member per field, in sorted field order, read-only, owner bigdata."""
    for field in sorted(sample):
        info = tarfile.TarInfo(f"{key}.{field}")
        info.size, info.mode, info.mtime = len(sample[field]), 0o444, time.time()
        info.uname = info.gname = "bigdata"
        tar.addfile(info, io.BytesIO(sample[field]))


def img2dataset_meta(key: str, url: str, caption: str, jpeg: bytes) -> dict:
    """The fields img2dataset's downloader writes for a successful sample (input columns first)."""
    with Image.open(io.BytesIO(jpeg)) as img:
        width, height = img.size
    return {"url": url, "caption": caption, "key": key, "status": "success", "error_message": None,
            "width": width, "height": height, "original_width": width, "original_height": height,
            "exif": json.dumps({"Image Make": "synthetic"}), "sha256": hashlib.sha256(jpeg).hexdigest()}


def failed_meta(key: str, url: str, caption: str) -> dict:
    """The fields img2dataset writes for a sample it could not download (in the Parquet files only)."""
    return {"url": url, "caption": caption, "key": key, "status": "failed_to_download",
            "error_message": "HTTP Error 404: Not Found", "width": None, "height": None, "original_width": None,
            "original_height": None, "exif": None, "sha256": None}


def write_shard_files(out_dir: str, shard_name: str, samples: list[tuple[str, bytes, str, dict]],
                      layout: str = "webdataset", failed: list[dict] = ()) -> None:
    """One shard in img2dataset's `layout` (webdataset, parquet or files): the successful `samples` (key, jpeg,
    caption, meta) and the `failed` ones' meta, with the stats JSON beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    metas = [m for *_, m in samples] + list(failed)
    if layout == "webdataset":
        with open(os.path.join(out_dir, f"{shard_name}.tar"), "wb") as f, tarfile.open(fileobj=f, mode="w|") as tar:
            for key, jpeg, caption, meta in samples:
                write_tar_sample(tar, key, {"jpg": jpeg, "txt": caption.encode(),
                                            "json": json.dumps(meta, indent=4).encode()})
    elif layout == "files":
        os.makedirs(os.path.join(out_dir, shard_name), exist_ok=True)
        for key, jpeg, caption, meta in samples:
            for ext, data in (("jpg", jpeg), ("txt", caption.encode()), ("json", json.dumps(meta, indent=4).encode())):
                with open(os.path.join(out_dir, shard_name, f"{key}.{ext}"), "wb") as f:
                    f.write(data)
    elif layout != "parquet":
        raise ValueError(layout)
    table = pa.Table.from_pylist(metas)
    if layout == "parquet":  # the image bytes as the last column, None for failed samples
        table = table.append_column("jpg", pa.array([j for _, j, _, _ in samples] + [None] * len(failed), pa.binary()))
    pq.write_table(table, os.path.join(out_dir, f"{shard_name}.parquet"))
    stats = {"count": len(metas), "successes": len(samples), "failed_to_download": len(failed),
             "failed_to_resize": 0, "duration": 1.0, "start_time": time.time(), "end_time": time.time(),
             "status_dict": {"success": len(samples), **({"failed_to_download": len(failed)} if failed else {})}}
    with open(os.path.join(out_dir, f"{shard_name}_stats.json"), "w") as f:
        json.dump(stats, f, indent=4)


def synth_as_webdataset(images_dir: str, out_dir: str, shards: int, layout: str = "webdataset",
                        failed_per_shard: int = 0) -> dict[str, dict]:
    """Every image of the Karpathy file in `images_dir` (its first caption) in `shards` shards under `out_dir`, in
    img2dataset's `layout`, with `failed_per_shard` failed downloads each; {key: {"jpeg", "caption", "url",
    "shard"}} of the successful samples."""
    with open(os.path.join(images_dir, "dataset_synth.json")) as f:
        entries = json.load(f)["images"]
    os.makedirs(out_dir, exist_ok=True)
    per_shard = -(-len(entries) // shards)
    written = {}
    for shard in range(shards):
        samples = []
        for index, entry in enumerate(entries[shard * per_shard : (shard + 1) * per_shard]):
            with open(os.path.join(images_dir, entry.get("filepath", ""), entry["filename"]), "rb") as f:
                image = f.read()
            jpeg = _as_jpeg(image)
            key = img2dataset_key(index, shard, per_shard)
            caption, url = entry["sentences"][0]["raw"], f"https://example.com/synth/{entry['filename']}"
            samples.append((key, jpeg, caption, img2dataset_meta(key, url, caption, jpeg)))
            written[key] = {"jpeg": jpeg, "caption": caption, "url": url, "shard": f"{shard:05d}"}
        failed = [failed_meta(img2dataset_key(per_shard + i, shard, per_shard + failed_per_shard),
                              f"https://example.com/gone/{shard}-{i}.jpg", "a lost picture")
                  for i in range(failed_per_shard)]
        write_shard_files(out_dir, f"{shard:05d}", samples, layout, failed)
    return written


def _as_jpeg(data: bytes) -> bytes:
    """img2dataset re-encodes every image it downloads (encode_format jpg)."""
    out = io.BytesIO()
    with Image.open(io.BytesIO(data)) as img:
        img.convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()
