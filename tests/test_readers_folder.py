"""A bare folder (local or S3) of images and videos: every media file a sample, anything else reported."""

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
