"""A bare folder (local or S3) of images and videos: every media file a sample, anything else reported; img2dataset's
files layout: sidecar .json metadata read, its bookkeeping files not items."""

import os

from media_fixtures import make_jpeg_bytes, write_file

from fastslow import storage
from fastslow.data import open_dataset
from fastslow.data.folder import FolderReader
from fastslow.data.types import ReadReport


def _layout(write):
    write("a.jpg", make_jpeg_bytes())
    write("a.txt", b"a red circle\n")  # sidecar caption of a.jpg
    write("sub/b.png", make_jpeg_bytes())  # wrong content for the extension: decoding will report it
    write("sub/clip.mp4", b"\x00" * 10)
    write("notes.pdf", b"%PDF")
    write("readme.txt", b"not a caption")  # a .txt with no media file beside it
    write(".hidden/c.jpg", make_jpeg_bytes())


def _read(reader):
    report = ReadReport(source=reader.source)
    samples = list(reader.samples(None, report))
    return samples, report


def test_local_folder_samples_ids_captions_and_reports(tmp_path):
    _layout(lambda rel, data: write_file(tmp_path / rel, data))
    reader = open_dataset(str(tmp_path))
    assert isinstance(reader, FolderReader)
    samples, report = _read(reader)
    by_id = {s.id: s for s in samples}
    assert sorted(by_id) == ["a.jpg", "sub/b.png", "sub/clip.mp4"]
    assert by_id["a.jpg"].captions == ["a red circle"] and by_id["sub/clip.mp4"].media == "video"
    assert by_id["sub/b.png"].captions == []
    # Everything read is either a sample or reported: the pdf and the stray .txt are reported.
    assert sorted(p.id for p in report.problems) == ["notes.pdf", "readme.txt"]
    assert report.read == len(samples) + len(report.problems)


def test_s3_prefix_reads_the_same(s3_bucket):
    _layout(lambda rel, data: storage.write_bytes(f"{s3_bucket}/media/{rel}", data))
    samples, report = _read(open_dataset(f"{s3_bucket}/media", format="folder"))
    assert sorted(s.id for s in samples) == ["a.jpg", "sub/b.png", "sub/clip.mp4"]
    assert [s.captions for s in samples if s.id == "a.jpg"] == [["a red circle"]]
    assert len(report.problems) == 2


def _files_layout(root) -> tuple:
    """img2dataset's files layout, 3 shards: a .json that is not JSON, one that is a list, a key whose image is
    gone, and a shard whose every download failed (an empty folder beside its Parquet and stats)."""
    from img2dataset_fixtures import make_hostile, write_img2dataset

    written = write_img2dataset(str(root), "files", 2, 12)
    bad_json = make_hostile(written, "bad_json", "00000")
    listed = written.keys_of("00000")[0]
    write_file(root / f"00000/{listed}.json", b"[1, 2]")
    no_image = make_hostile(written, "no_image", "00001")
    assert make_hostile(written, "all_failed") == "00002" and not os.listdir(root / "00002")
    return written, bad_json, listed, no_image


def test_img2dataset_files_layout_meta_and_bookkeeping(tmp_path):
    written, bad_json, listed, no_image = _files_layout(tmp_path)
    reader = open_dataset(str(tmp_path))
    assert isinstance(reader, FolderReader)
    samples, report = _read(reader)
    good = {f"{v['shard']}/{k}.jpg": v for k, v in written.samples.items() if k not in (bad_json, listed, no_image)}
    assert sorted(s.id for s in samples) == sorted(good)
    for s in samples:
        assert s.meta == good[s.id]["meta"] and s.captions == [good[s.id]["caption"]]
    # The Parquet and stats files beside each shard folder are neither items nor reported; the orphaned
    # caption and metadata of the key whose image is gone are.
    assert sorted((p.id, p.reason) for p in report.problems) == [
        (f"00000/{listed}.jpg", "metadata .json is not a JSON object"),
        (f"00000/{bad_json}.jpg", "metadata .json is not JSON"),
        (f"00001/{no_image}.json", "not an image or video file (unknown extension)"),
        (f"00001/{no_image}.txt", "not an image or video file (unknown extension)"),
    ]
    assert report.read == len(samples) + len(report.problems)


def test_img2dataset_files_layout_on_s3(tmp_path, s3_bucket):
    written, bad_json, listed, no_image = _files_layout(tmp_path)
    for path in storage.list_files(str(tmp_path)):
        storage.upload_file(path, f"{s3_bucket}/i2d/{os.path.relpath(path, tmp_path)}")
    samples, report = _read(open_dataset(f"{s3_bucket}/i2d"))
    assert len(samples) == len(written.samples) - 3 and len(report.problems) == 4
    assert all(s.meta["key"] == s.id.split("/")[1].split(".")[0] for s in samples)
