"""Manifest reader: CSV, JSONL and Parquet rows of a media URI and captions."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest
from media_fixtures import make_jpeg_bytes, make_mp4_bytes, make_png_bytes, random_bytes, write_file

from fastslow import storage
from fastslow.data import DecodeConfig, ManifestReader, ReadReport, load_split, open_dataset
from fastslow.errors import FastslowError

CFG = DecodeConfig(image_size=8, num_frames=2)

ROWS = [
    {"path": "media/a.jpg", "captions": ["a red square", "red"], "split": "test"},
    {"path": "media/b.png", "caption": "a blue square", "split": "test", "id": "blue"},
    {"path": "media/corrupt.jpg", "caption": "corrupt", "split": "test"},
    {"path": "media/gone.jpg", "caption": "missing", "split": "test"},
    {"path": "media/clip.bin", "caption": "a clip", "split": "train", "media": "video"},
    {"path": "other/a.jpg", "caption": "same stem as a", "split": "test"},
    {"path": "media/nocap.jpg", "caption": "", "split": "test"},
    {"path": "media/x.xyz", "caption": "unknown type", "split": "test"},
    {"path": "https://example.com/y.jpg", "caption": "web", "split": "test"},
    {"caption": "no uri", "split": "test", "id": "nouri"},
]


def make_media(root) -> None:
    write_file(os.path.join(root, "media", "a.jpg"), make_jpeg_bytes(color=(230, 10, 10)))
    write_file(os.path.join(root, "media", "b.png"), make_png_bytes(color=(10, 10, 230)))
    write_file(os.path.join(root, "media", "corrupt.jpg"), random_bytes())
    write_file(os.path.join(root, "media", "clip.bin"), make_mp4_bytes(4))


def write_manifest(path, rows) -> str:
    path = str(path)
    if path.endswith(".jsonl"):
        return write_file(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = ["path", "caption", "captions", "split", "id", "media"]
        table = pa.table({c: [r.get(c) for r in rows] for c in cols})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return write_file(path, buf.getvalue())
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["path", "caption", "captions", "split", "id", "media"])
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "captions": json.dumps(r["captions"]) if "captions" in r else ""})
    return write_file(path, out.getvalue().encode())


EXPECTED_PROBLEMS = {
    "a": "duplicate id (ids default to file stems: add an id column)",
    "nocap": "no captions",
    "x": "unknown media type (set a media column)",
    "y": "unsupported URI scheme (local paths and s3:// only)",
    "nouri": "no media uri",
}


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_reads_each_format(tmp_path, ext):
    make_media(tmp_path)
    path = write_manifest(tmp_path / f"manifest.{ext}", ROWS)
    reader = open_dataset(path)
    assert isinstance(reader, ManifestReader)
    assert reader.splits() == ["test", "train"]
    report = ReadReport()
    samples = list(reader.samples("test", report))
    assert [s.id for s in samples] == ["a", "blue", "corrupt", "gone"]
    assert samples[0].captions == ["a red square", "red"]
    assert samples[0].uri == os.path.join(str(tmp_path), "media", "a.jpg")
    assert {p.id: p.reason for p in report.problems} == EXPECTED_PROBLEMS
    assert report.read == 9
    [clip] = reader.samples("train", ReadReport())
    assert clip.media == "video" and clip.id == "clip"


def test_load_split_reports_corrupt_and_missing(tmp_path):
    make_media(tmp_path)
    loaded = load_split(open_dataset(write_manifest(tmp_path / "m.csv", ROWS)), "test", CFG, progress=False)
    assert loaded.ids == ["a", "blue"] and loaded.pixels.shape == (2, 8, 8, 3)
    problems = {p.id: p.reason for p in loaded.report.problems}
    assert problems["corrupt"] == "not an image" and problems["gone"] == "missing file"
    assert loaded.report.read == loaded.report.used + len(loaded.report.problems) == 9


def test_media_root_and_absolute_paths(tmp_path):
    make_media(tmp_path / "elsewhere")
    abs_b = str(tmp_path / "elsewhere" / "media" / "b.png")
    rows = [{"path": "media/a.jpg", "caption": "a"}, {"path": abs_b, "caption": "b"}]
    path = write_manifest(tmp_path / "m.jsonl", rows)
    reader = open_dataset(path, media_root=str(tmp_path / "elsewhere"))
    assert reader.splits() == []
    samples = list(reader.samples(None, ReadReport()))
    assert [s.uri for s in samples] == [str(tmp_path / "elsewhere" / "media" / "a.jpg"), abs_b]
    with pytest.raises(FastslowError, match="no split information"):
        list(reader.samples("test", ReadReport()))


def test_bad_jsonl_lines_are_reported(tmp_path):
    path = write_file(tmp_path / "m.jsonl", b'{"uri": "a.jpg", "caption": "ok"}\nnot json\n[1, 2]\n')
    report = ReadReport()
    assert [s.id for s in ManifestReader(path).samples(None, report)] == ["a"]
    assert [(p.id, p.reason.split(":")[0]) for p in report.problems] == [("#1", "line 2"), ("#2", "line 3")]
    assert report.read == 3


def test_whole_file_problems_name_the_file(tmp_path):
    no_uri = write_file(tmp_path / "nouri.csv", b"name,caption\na.jpg,x\n")
    with pytest.raises(FastslowError, match="nouri.csv: no media column"):
        ManifestReader(no_uri).splits()
    no_cap = write_file(tmp_path / "nocap.jsonl", b'{"uri": "a.jpg"}\n')
    with pytest.raises(FastslowError, match="nocap.jsonl: no caption or captions column"):
        list(ManifestReader(no_cap).samples(None, ReadReport()))
    bad_parquet = write_file(tmp_path / "bad.parquet", random_bytes())
    with pytest.raises(FastslowError, match="bad.parquet: not a readable Parquet file"):
        ManifestReader(bad_parquet).splits()
    with pytest.raises(FastslowError, match="none.csv: no such file"):
        ManifestReader(str(tmp_path / "none.csv")).splits()


def test_reads_manifest_and_media_from_s3(tmp_path, s3_bucket):
    make_media(tmp_path)
    for path in storage.list_files(str(tmp_path / "media")):
        storage.upload_file(path, f"{s3_bucket}/ds/media/{os.path.basename(path)}")
    storage.upload_file(write_manifest(tmp_path / "m.parquet", ROWS), f"{s3_bucket}/ds/m.parquet")
    loaded = load_split(open_dataset(f"{s3_bucket}/ds/m.parquet"), "test", CFG, progress=False)
    assert loaded.ids == ["a", "blue"]
    assert loaded.uris[0] == f"{s3_bucket}/ds/media/a.jpg"
    assert {p.id: p.reason for p in loaded.report.problems}["gone"] == "missing file"
    assert loaded.report.balanced
