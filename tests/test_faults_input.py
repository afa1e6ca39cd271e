"""Fault suite, bad input: a collection of hostile media files and a manifest with broken lines and duplicate ids
indexed by the index job (everything read is indexed or reported, naming the item and what is wrong); Karpathy
and VATEX files with bad entries (each entry reported); and annotation files broken as a whole, refused by
`fastslow index` in one line naming the file, before any Ray work starts.
"""

import json
import struct
import zlib

import pytest
from media_fixtures import make_jpeg_bytes, make_mp4_bytes, make_png_bytes, random_bytes, write_file
from helpers import build, job_id, job_summary, wait_for

from apps import cli
from fastslow import storage
from fastslow.config import IndexRunConfig, load_config
from fastslow.index.publish import load_version, version_dir
from fastslow.index.build import index_rows

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def huge_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few hundred bytes whose header claims 10^10 pixels: decoding it whole would take 30 GB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


# Hostile media: file name -> (bytes, what the errors file must say).
BAD_MEDIA = {
    "corrupt.jpg": (random_bytes(600, seed=3), ("corrupt image", "not an image")),
    "truncated.jpg": (make_jpeg_bytes(64, 64)[:200], ("corrupt image",)),
    "empty.png": (b"", ("empty file",)),
    "huge.png": (huge_png(), ("image too large",)),
    "text.jpg": (b"just some words, not a picture\n" * 20, ("not an image",)),
    "movie.jpg": (make_mp4_bytes(num_frames=4), ("not an image",)),
    "empty.mp4": (b"", ("empty file",)),
    "truncated.mp4": (make_mp4_bytes(num_frames=12)[:400], ("corrupt video", "no frames")),
    "text.mp4": (b"not a video at all\n" * 50, ("corrupt video",)),
}
GOOD = {f"good{i}.png": make_png_bytes(32, 32, (60 * i, 200 - 40 * i, 90)) for i in range(4)}
GOOD |= {f"clip{i}.mp4": make_mp4_bytes(num_frames=6 + i) for i in range(2)}


def item_id(name: str) -> str:
    """The id the manifest gives a file: its name with the dot made an underscore (good0.png -> good0_png)."""
    return name.replace(".", "_")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A JSONL manifest over the good and hostile files, a missing file, broken lines and a duplicate id:
    (manifest path, {id: expected reason substrings}, number of lines, number of good items)."""
    root = tmp_path_factory.mktemp("hostile")
    for name, data in {**GOOD, **{n: d for n, (d, _) in BAD_MEDIA.items()}}.items():
        write_file(root / "media" / name, data)
    expected = {item_id(name): why for name, (_, why) in BAD_MEDIA.items()}
    lines = [json.dumps({"id": item_id(n), "uri": f"media/{n}", "caption": f"item {n}"}) for n in [*GOOD, *BAD_MEDIA]]
    lines.append(json.dumps({"id": "missing_jpg", "uri": "media/missing.jpg", "caption": "gone"}))
    expected["missing_jpg"] = ("missing file",)
    lines.append(json.dumps({"id": "good0_png", "uri": "media/good1.png", "caption": "a second good0"}))
    # Broken lines are reported by their position, '#<line index>'.
    for line, why in (("{not json", ("JSON",)), ("[1, 2, 3]", ("object",)),
                      (json.dumps({"caption": "no uri"}), ("uri", "media"))):
        expected[f"#{len(lines)}"] = why
        lines.append(line)
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest), expected, len(lines), len(GOOD)


def test_hostile_collection_is_indexed_or_reported_item_by_item(hostile, tiny_fast_checkpoint, tmp_path, submit_job,
                                                                fault_record):
    manifest, expected, lines, good = hostile
    root, job = str(tmp_path / "index"), job_id("hostile")
    client = build(submit_job, job, manifest, tiny_fast_checkpoint, root)
    status, logs = wait_for(client, job)
    assert status == "SUCCEEDED", logs[-4000:]
    summary = job_summary(logs)
    assert (summary["read"], summary["indexed"]) == (lines, good)
    assert summary["read"] == summary["indexed"] + summary["errors"]  # nothing lost

    loaded = load_version(root)
    indexed = loaded.metadata.column("id").to_pylist()
    assert sorted(indexed) == sorted(map(item_id, GOOD))
    errors = [json.loads(line) for line in storage.read_text(
        storage.join(version_dir(root, loaded.version), "errors.jsonl")).splitlines()]
    by_id = {}
    for e in errors:
        by_id.setdefault(e["id"], []).append(e)
    # The duplicate row is reported under the id it repeats.
    dup = [e for e in by_id.pop("good0_png") if "duplicate id" in e["reason"]]
    assert len(dup) == 1 and dup[0]["uri"].endswith("good1.png")
    assert set(by_id) == set(expected), (sorted(by_id), sorted(expected))
    for item, why in expected.items():
        (e,) = by_id[item]
        assert any(w in e["reason"] for w in why), (item, e)
        assert e["uri"], e  # names the input: the file, or the manifest for a broken line
        fault_record("input", f"media/manifest: {item}", refused=True, message=e["reason"])
    fault_record("input", "media/manifest: duplicate id good0_png", refused=True, message=dup[0]["reason"])
    fault_record("input", "the hostile manifest above, through the index job", tried=summary["read"],
                 refused=summary["errors"], items_in=summary["read"], indexed=summary["indexed"],
                 reported=summary["errors"])


def _rows(path: str):
    cfg = load_config(IndexRunConfig, None, [f"data.path={json.dumps(path)}"])
    rows, report, _ = index_rows(cfg)
    return rows, report


def test_karpathy_and_vatex_bad_entries_are_each_reported(tmp_path, fault_record):
    images = tmp_path / "flickr"
    for i in range(3):
        write_file(images / f"{i}.jpg", make_jpeg_bytes(32, 32, (80 * i, 40, 40)))
    entry = lambda name, **kw: {"filename": name, "split": "test",  # noqa: E731
                                "sentences": [{"raw": f"photo {name}"}], **kw}
    karpathy = {"images": [entry("0.jpg"), entry("1.jpg"), entry("0.jpg"), entry("2.jpg", sentences=[]),
                           entry("9.jpg"), {"split": "test"}, "not an entry", entry("1.jpg", split=None)]}
    (images / "dataset_flickr30k.json").write_text(json.dumps(karpathy))
    rows, report = _rows(str(images / "dataset_flickr30k.json"))
    assert [r["id"] for r in rows] == ["0", "1", "9"]  # 9.jpg is missing: found when decoded, and reported then
    assert report.read == len(rows) + len(report.problems) == 8
    reasons = " | ".join(p.reason for p in report.problems)
    for why in ("duplicate id", "no captions", "missing split"):
        assert why in reasons, reasons
    problems = list(report.problems)

    videos = tmp_path / "vatex"
    for name in ("a", "b"):
        write_file(videos / "videos" / f"{name}.mp4", make_mp4_bytes(num_frames=4))
    vatex = [{"videoID": "a", "enCap": ["a clip"]}, {"videoID": "a", "enCap": ["again"]}, {"enCap": ["no id"]},
             {"videoID": "b", "enCap": []}, {"videoID": "zz", "enCap": ["no such video"]}]
    (videos / "vatex_test.json").write_text(json.dumps(vatex))
    rows, report = _rows(str(videos))
    assert [r["id"] for r in rows] == ["a"] and report.read == 1 + len(report.problems) == 5
    reasons = " | ".join(p.reason for p in report.problems)
    for why in ("duplicate id", "entry without a videoID", "no captions", "missing file"):
        assert why in reasons, reasons
    for p in problems + report.problems:
        fault_record("input", f"annotation entry: {p.id}", refused=True, message=f"{p.uri}: {p.reason}")


# File name -> (bytes, what the one line must say, settings given with it).
BROKEN_FILES = {
    "dataset_coco.json": (b'{"images": [{"filename": "a.jpg"', "not valid JSON", []),
    "dataset_flickr8k.json": (b'[{"filename": "a.jpg"}]', "neither Karpathy", []),
    "dataset_flickr30k.json": (b'[{"filename": "a.jpg"}]', "expected a JSON object with an 'images' list",
                               ["data.format=karpathy"]),
    "vatex_val.json": (b'{"videoID": "a"}', "expected a JSON list", ["data.format=vatex"]),
    "manifest.csv": (b"name,text\nx.jpg,a cat\n", "no media column", []),
    "captions.jsonl": (b'{"uri": "x.jpg"}\n', "no caption or captions column", []),
    "table.parquet": (random_bytes(300), "not a readable Parquet file", []),
    "notes.yaml": (b"a: 1", "format", []),
}


@pytest.mark.parametrize("name", sorted(BROKEN_FILES))
def test_broken_annotation_files_are_refused_in_one_line(name, tiny_fast_checkpoint, tmp_path, capsys, fault_record):
    data, why, settings = BROKEN_FILES[name]
    path = tmp_path / "ds" / name
    write_file(path, data)
    code = cli.main(["index", "--data", str(path), "--checkpoint", tiny_fast_checkpoint, "--root",
                     str(tmp_path / "index"), "--no-progress", *settings])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("fastslow index: error: ") and str(path) in err and why in err, err
    assert not (tmp_path / "index").exists()
    fault_record("input", f"annotation file: {name}", refused=True, message=err)
