"""img2dataset collections written the way img2dataset itself writes them, and hostile variants of their shards.

From its source (rom1504/img2dataset: downloader.py, writer.py, logger.py, resizer.py, reader.py):
- key = compute_key(row, shard_id, ceil(log10(number_sample_per_shard)), oom_shard_count), shard f"{id:05d}";
- a row's metadata: the input columns in the reader's order (caption, then url: its column_list puts url last),
  key, status, error_message, width, height, original_width, original_height, exif (a JSON string), sha256 (of
  the downloaded bytes, before resizing); a failed row has its input columns, status and error only;
- the image written is the download resized (resize_mode border: longest side to image_size, padded white to a
  square) and re-encoded; rows are written as their downloads finish (imap_unordered), not in key order;
- every row, failed ones too, goes to `{shard}.parquet` through BufferedParquetWriter: a row group per 100 rows;
- tars are webdataset's TarWriter: stream mode "w|" (PAX), a member per field in sorted order (jpg, json, txt),
  mode 0o444, owner bigdata, mtime time.time() (a float: each member gets a PAX header).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import shutil
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

LAYOUTS = ("webdataset", "parquet", "files")
CAPTIONS = ("a red bicycle leaning on a wall", "two dogs running on a beach", "a bowl of green apples",
            "a lighthouse at dusk", "snow on a mountain road", "a cat asleep on a sofa", "boats in a harbour")
ERRORS = {"failed_to_download": "HTTP Error 404: Not Found", "failed_to_resize": "image too small"}
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
SIZE_FIELDS = ("width", "height", "original_width", "original_height")


@dataclass
class Written:
    """What write_img2dataset wrote, and how. samples: key -> caption, url, image (the exact bytes written), shard,
    meta; failed: key -> shard, meta (rows in the Parquet files only)."""

    dir: str
    layout: str
    per_shard: int
    captions: tuple[str, ...] | None = CAPTIONS
    image_size: int = 32
    encode_format: str = "jpg"
    oom_shard_count: int = 5
    buffer_size: int = 100
    samples: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, dict] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)

    def keys_of(self, shard: str) -> list[str]:
        return sorted(k for k, v in self.samples.items() if v["shard"] == shard)


def compute_key(key: int, shard_id: int, oom_sample_per_shard: int, oom_shard_count: int) -> str:
    """img2dataset's downloader.compute_key."""
    return f"{10 ** oom_sample_per_shard * shard_id + key:0{oom_sample_per_shard + oom_shard_count}d}"


def meta_schema(caption: bool = True) -> pa.Schema:
    """The metadata schema: the input columns, then the downloader's (extract_exif and compute_hash at defaults)."""
    fields = [("caption", pa.string())] if caption else []
    fields += [("url", pa.string()), ("key", pa.string()), ("status", pa.string()), ("error_message", pa.string())]
    fields += [(name, pa.int32()) for name in SIZE_FIELDS] + [("exif", pa.string()), ("sha256", pa.string())]
    return pa.schema(fields)


def downloaded_image(n: int) -> bytes:
    """The bytes 'downloaded' for row n: a JPEG of its own size and colour, carrying EXIF (make, model)."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Fastslow", f"Synth {n % 3}"
    colour = ((53 * n) % 256, (97 * n + 40) % 256, (29 * n + 200) % 256)
    out = io.BytesIO()
    Image.new("RGB", (24 + 7 * (n % 5), 20 + 5 * (n % 3)), colour).save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


def exif_json(download: bytes) -> str:
    """The exif field: exifread's tags (named like 'Image Make') as {name: str(value).strip()}, JSON-encoded."""
    names = {0x010F: "Image Make", 0x0110: "Image Model"}
    tags = Image.open(io.BytesIO(download)).getexif()
    return json.dumps({names[t]: str(v).strip() for t, v in sorted(tags.items()) if t in names})


def resize_border(download: bytes, image_size: int, encode_format: str = "jpg") -> tuple[bytes, int, int, int, int]:
    """resize_mode border: (bytes written, width, height, original_width, original_height)."""
    with Image.open(io.BytesIO(download)) as img:
        ow, oh = img.size
        scale = image_size / max(ow, oh)
        inner = img.convert("RGB").resize((max(1, round(ow * scale)), max(1, round(oh * scale))))
    canvas = Image.new("RGB", (image_size, image_size), (255, 255, 255))
    canvas.paste(inner, ((image_size - inner.width) // 2, (image_size - inner.height) // 2))
    out = io.BytesIO()
    canvas.save(out, PIL_FORMATS[encode_format], quality=95)
    return out.getvalue(), image_size, image_size, ow, oh


def download_row(n: int, key: str, caption: str | None, status: str, image_size: int,
                 encode_format: str = "jpg") -> tuple[bytes | None, dict]:
    """What the downloader makes of input row n: (the image written, None when it failed; its metadata)."""
    meta = {} if caption is None else {"caption": caption}
    meta |= {"url": f"https://example.com/img/{n}.jpg", "key": key, "status": status, "error_message": None}
    meta |= dict.fromkeys((*SIZE_FIELDS, "exif", "sha256"))
    if status != "success":
        meta["error_message"] = ERRORS[status]
        return None, meta
    download = downloaded_image(n)
    image, *sizes = resize_border(download, image_size, encode_format)
    meta |= dict(zip(SIZE_FIELDS, sizes))
    meta["exif"], meta["sha256"] = exif_json(download), hashlib.sha256(download).hexdigest()
    return image, meta


def write_members(path: str, members: list[tuple[str, bytes]]) -> None:
    """A tar as webdataset's TarWriter writes it, `members` (name, bytes) in the order given."""
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w|") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), time.time(), 0o444
            info.uname = info.gname = "bigdata"
            tar.addfile(info, io.BytesIO(data))


def write_files(folder: str, rows: list[tuple], ext: str = "jpg") -> None:
    """FilesSampleWriter: `{key}.{ext}`, `{key}.txt` (with a caption column), `{key}.json` per successful row."""
    os.makedirs(folder, exist_ok=True)  # also when no download of the shard succeeded
    for key, image, caption, meta in rows:
        texts = {"json": json.dumps(meta, indent=4)} | ({} if caption is None else {"txt": str(caption)})
        for name, data, mode in [(ext, image, "wb")] + [(e, t, "w") for e, t in texts.items()]:
            with open(os.path.join(folder, f"{key}.{name}"), mode) as f:
                f.write(data)


def write_parquet(path: str, schema: pa.Schema, rows: list[dict], buffer_size: int = 100) -> None:
    """BufferedParquetWriter: a ParquetWriter given a table (so a row group) per `buffer_size` rows."""
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(rows), buffer_size):
            writer.write_table(pa.Table.from_pylist(rows[start : start + buffer_size], schema))


def write_stats(out_dir: str, name: str, metas: list[dict], start: float, end: float) -> None:
    """logger.write_stats; status_dict counts 'success' and each error message."""
    statuses = Counter(m["status"] for m in metas)
    status_dict = Counter(m["error_message"] or "success" for m in metas)
    stats = {"count": len(metas), "successes": statuses["success"],
             "failed_to_download": statuses["failed_to_download"], "failed_to_resize": statuses["failed_to_resize"],
             "duration": end - start, "start_time": start, "end_time": end, "status_dict": status_dict}
    with open(os.path.join(out_dir, f"{name}_stats.json"), "w") as f:
        json.dump(stats, f, indent=4)


def write_shard(written: Written, name: str, results: list[tuple]) -> None:
    """One shard (results: key, image or None, caption, meta, in write order) as the layout's sample writer."""
    ok, ext = [r for r in results if r[1] is not None], written.encode_format
    schema, rows = meta_schema(written.captions is not None), [meta for *_, meta in results]
    if written.layout == "webdataset":  # TarWriter: the sample's fields sorted (txt only with a caption column)
        samples = [({ext: image, "json": json.dumps(meta, indent=4).encode()}
                    | ({} if caption is None else {"txt": str(caption).encode()}), key)
                   for key, image, caption, meta in ok]
        write_members(os.path.join(written.dir, f"{name}.tar"),
                      [(f"{key}.{f}", fields[f]) for fields, key in samples for f in sorted(fields)])
    elif written.layout == "files":
        write_files(os.path.join(written.dir, name), ok, ext)
    else:  # parquet: the image column last; the txt field is not in the schema, so is dropped
        schema = schema.append(pa.field(ext, pa.binary()))
        rows = [meta | {ext: image} for _, image, _, meta in results]
    write_parquet(os.path.join(written.dir, f"{name}.parquet"), schema, rows, written.buffer_size)


def write_img2dataset(out_dir: str, layout: str, n_shards: int, per_shard: int, *, failed_to_download: int = 1,
                      failed_to_resize: int = 0, captions: tuple[str, ...] | None = CAPTIONS, image_size: int = 32,
                      encode_format: str = "jpg", oom_shard_count: int = 5, buffer_size: int = 100,
                      seed: int = 0) -> Written:
    """`n_shards` shards of `per_shard` input rows (number_sample_per_shard) in img2dataset's `layout`, that
    many rows of each failed (picked at random); captions cycle through `captions` (None: no caption column)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown img2dataset layout {layout!r}")
    os.makedirs(out_dir, exist_ok=True)
    written = Written(out_dir, layout, per_shard, captions, image_size, encode_format, oom_shard_count, buffer_size)
    rng = random.Random(seed)
    for shard_id in range(n_shards):
        failing = rng.sample(range(per_shard), failed_to_download + failed_to_resize)
        status = dict.fromkeys(failing[:failed_to_download], "failed_to_download")
        status |= dict.fromkeys(failing[failed_to_download:], "failed_to_resize")
        write_downloads(written, shard_id, per_shard, status, rng)
    return written


def write_downloads(written: Written, shard_id: int, rows: int, status: dict[int, str], rng: random.Random) -> str:
    """Download `rows` input rows into shard `shard_id` (status: row -> failure, else success) and write it
    with its stats as `written.layout` does; its name."""
    name, start, order = f"{shard_id:0{written.oom_shard_count}d}", time.time(), list(range(rows))
    oom = math.ceil(math.log10(written.per_shard))
    rng.shuffle(order)  # downloads finish in any order, and rows are written as they finish
    results = []
    for row in order:
        n = shard_id * written.per_shard + row
        caption = None if written.captions is None else written.captions[n % len(written.captions)]
        key = compute_key(row, shard_id, oom, written.oom_shard_count)
        image, meta = download_row(n, key, caption, status.get(row, "success"), written.image_size,
                                   written.encode_format)
        results.append((key, image, caption, meta))
    write_shard(written, name, results)
    write_stats(written.dir, name, [meta for *_, meta in results], start, time.time())
    written.shards.append(name)
    for key, image, caption, meta in results:
        if image is None:
            written.failed[key] = {"shard": name, "meta": meta}
        else:
            written.samples[key] = {"caption": caption, "url": meta["url"], "image": image, "shard": name,
                                    "meta": meta}
    return name


HOSTILE = ("truncated", "not_image", "bad_json", "no_image", "duplicate", "empty", "all_failed")
SPOILT = b"\x00not an image{"  # neither an image nor JSON


def make_hostile(written: Written, kind: str, shard: str = "00000", key: str | None = None) -> str:
    """Spoil a written collection in place; the key spoilt (truncated: the key cut in the tar; the shard
    for a truncated Parquet), or the name of the shard added (duplicate: a copy of `shard` under the next
    shard id, so every key met twice; empty: no rows; all_failed: every download failed)."""
    if kind not in HOSTILE:
        raise ValueError(f"unknown hostile kind {kind!r}; known: {', '.join(HOSTILE)}")
    if kind in ("duplicate", "empty", "all_failed"):
        return _add_shard(written, kind, shard)
    if kind == "bad_json" and written.layout == "parquet":
        raise ValueError("the parquet layout has no .json to garble")
    key = key or written.keys_of(shard)[len(written.keys_of(shard)) // 2]
    ext, base = written.encode_format, os.path.join(written.dir, shard)
    if written.layout == "webdataset":
        return _spoil_tar(f"{base}.tar", kind, key, ext)
    if written.layout == "parquet":
        return _spoil_parquet(f"{base}.parquet", kind, key, ext, written.buffer_size)
    path = Path(base, f"{key}.{'json' if kind == 'bad_json' else ext}")
    if kind == "no_image":  # its .txt and .json stay
        path.unlink()
    else:  # truncated: the image cut in half; not_image and bad_json: bytes no decoder accepts
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if kind == "truncated" else SPOILT)
    return key


def _spoil_tar(path: str, kind: str, key: str, ext: str) -> str:
    """A tar member spoilt: cut in the middle of `key`'s image, its image replaced or dropped, its json garbled."""
    with tarfile.open(path) as tar:
        infos = [m for m in tar if m.isfile()]
        members = [(m.name, tar.extractfile(m).read()) for m in infos]
    if kind == "truncated":
        image = next(m for m in infos if m.name == f"{key}.{ext}")
        with open(path, "r+b") as f:
            f.truncate(image.offset_data + image.size // 2)
        return key
    target = f"{key}.json" if kind == "bad_json" else f"{key}.{ext}"
    if kind == "no_image":
        members = [m for m in members if m[0] != target]
    else:
        members = [(n, SPOILT if n == target else d) for n, d in members]
    write_members(path, members)
    return key


def _spoil_parquet(path: str, kind: str, key: str, ext: str, buffer_size: int) -> str:
    """The Parquet cut in half (its footer lost), or `key`'s image cell replaced (not_image) or nulled (no_image)."""
    if kind == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        return os.path.basename(path)[: -len(".parquet")]
    table = pq.read_table(path)
    spoilt = SPOILT if kind == "not_image" else None
    rows = [row | {ext: spoilt} if row["key"] == key else row for row in table.to_pylist()]
    write_parquet(path, table.schema, rows, buffer_size)
    return key


def _add_shard(written: Written, kind: str, shard: str) -> str:
    """A shard after the last: a copy of `shard` (duplicate), one with no input rows, or one whose every
    download failed (all_failed: a tar or folder with nothing in it, a Parquet of failed rows)."""
    shard_id = int(written.shards[-1]) + 1
    if kind != "duplicate":
        rows = 0 if kind == "empty" else written.per_shard
        return write_downloads(written, shard_id, rows, dict.fromkeys(range(rows), "failed_to_download"),
                               random.Random(shard_id))
    name = f"{shard_id:0{written.oom_shard_count}d}"
    base, src = os.path.join(written.dir, name), os.path.join(written.dir, shard)
    for suffix in ("", ".tar", ".parquet", "_stats.json"):
        if os.path.exists(src + suffix):
            (shutil.copytree if suffix == "" else shutil.copy)(src + suffix, base + suffix)
    written.shards.append(name)
    return name
