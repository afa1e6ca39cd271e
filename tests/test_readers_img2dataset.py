"""img2dataset's three output layouts read as img2dataset writes them (tests/img2dataset_fixtures.py): webdataset
tars, parquet files with the image bytes in a column, and files (one folder per shard), each with its metadata
Parquet and _stats.json beside. Every successful sample is read with its id, caption, exact bytes and metadata;
failed downloads (in the Parquet only) are reported; a Parquet item reads back alone; the parquet layout reads
the same on S3; hostile Parquet shards are reported; the layouts index and serve their media."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from img2dataset_fixtures import ERRORS, LAYOUTS, make_hostile, write_img2dataset, write_parquet
from synth_shards import synth_as_webdataset

from fastslow import storage
from fastslow.data import FolderReader, Img2DatasetParquetReader, ReadReport, WebDatasetReader, open_dataset
from fastslow.data.decode import read_sample_bytes
from fastslow.data.manifest import ManifestReader
from fastslow.data.members import read_member
from fastslow.errors import DecodeError, FastslowError

READERS = {"webdataset": WebDatasetReader, "parquet": Img2DatasetParquetReader, "files": FolderReader}
NO_IMAGE = {status: f"no image ({status}: {error})" for status, error in ERRORS.items()}


def _write(root, layout: str, **kw):
    """3 shards of 12 rows (a failed download and a failed resize in each); Parquet row groups of 5 rows."""
    return write_img2dataset(str(root / layout), layout, 3, 12, failed_to_resize=1, buffer_size=5, **kw)


@pytest.fixture(scope="module", params=LAYOUTS)
def written(request, tmp_path_factory):
    return _write(tmp_path_factory.mktemp("img2dataset"), request.param)


def _read(reader) -> tuple[list, ReadReport]:
    """Every sample, and the report of the read (every row read is used or reported)."""
    report = ReadReport(source=reader.source)
    samples = list(reader.samples(None, report))
    report.used = len(samples)
    return samples, report


def _key(sample_id: str) -> str:
    """The img2dataset key of a sample id (the files layout's ids are paths: 00000/0000012.jpg)."""
    return os.path.basename(sample_id).split(".")[0]


def test_each_layout_reads_exactly_the_successful_samples(written):
    reader = open_dataset(written.dir)  # auto: tars win over the Parquet beside them; bookkeeping is no item
    assert type(reader) is READERS[written.layout]
    samples, report = _read(reader)
    ids = {"webdataset": "{key}", "parquet": "{key}", "files": "{shard}/{key}.jpg"}[written.layout]
    assert sorted(s.id for s in samples) == sorted(ids.format(key=k, shard=v["shard"])
                                                   for k, v in written.samples.items())
    for s in samples:
        item = written.samples[_key(s.id)]
        assert s.media == "image" and s.captions == [item["caption"]] and read_sample_bytes(s) == item["image"]
        assert {k: s.meta[k] for k in item["meta"]} == item["meta"]  # url, key, status, sizes, exif, sha256
        assert s.meta["width"] == s.meta["height"] == 32 and json.loads(s.meta["exif"])["Image Make"] == "Fastslow"
        assert "jpg" not in s.meta
    if written.layout == "parquet":  # the failed rows are rows with no image: each reported
        assert sorted((p.id, p.reason) for p in report.problems) == sorted(
            (k, NO_IMAGE[v["meta"]["status"]]) for k, v in written.failed.items())
        assert [p.uri for p in report.problems][0].endswith(f".parquet#{report.problems[0].id}")
    else:  # the tars and folders hold the successful samples only
        assert not report.problems
    assert report.read == len(samples) + len(report.problems) == len(written.samples) + (
        len(written.failed) if written.layout == "parquet" else 0)


def test_sharded_layouts_read_shard_by_shard(written):
    reader = open_dataset(written.dir)
    if written.layout == "files":
        assert reader.shards() is None
        return
    ext = ".tar" if written.layout == "webdataset" else ".parquet"
    assert reader.shards() == [os.path.join(written.dir, s + ext) for s in written.shards]
    for shard, name in zip(reader.shards(), written.shards):
        report = ReadReport()
        samples = list(reader.shard_samples(shard, report))
        assert sorted(s.id for s in samples) == written.keys_of(name)
        assert report.read == len(samples) + len(report.problems)


def test_parquet_layout_uri_forms(tmp_path):
    written = _write(tmp_path, "parquet")
    one = os.path.join(written.dir, "00001.parquet")
    reader = open_dataset(one)  # a single img2dataset Parquet file given directly
    assert type(reader) is Img2DatasetParquetReader
    assert sorted(s.id for s in _read(reader)[0]) == written.keys_of("00001")
    samples, report = _read(open_dataset(os.path.join(written.dir, "{00000..00003}.parquet")))  # 00003: missing
    assert len(samples) == len(written.samples)
    assert [(p.id, p.reason) for p in report.problems if "missing" in p.reason] == [
        ("00003.parquet", "missing shard (no such file)")]
    assert type(open_dataset(written.dir, format="img2dataset_parquet")) is Img2DatasetParquetReader


def test_metadata_only_parquet_is_not_the_parquet_layout(tmp_path):
    written = _write(tmp_path, "webdataset")
    with pytest.raises(FastslowError, match="with key and image columns"):
        open_dataset(written.dir, format="img2dataset_parquet")
    assert type(open_dataset(os.path.join(written.dir, "00000.parquet"))) is ManifestReader  # a manifest, then


def test_a_parquet_item_reads_back_alone(tmp_path):
    written = _write(tmp_path, "parquet")
    shard = os.path.join(written.dir, "00002.parquet")
    assert pq.ParquetFile(shard).num_row_groups == 3  # 12 rows in groups of 5: items in every group
    for key in written.keys_of("00002"):
        assert read_member(f"{shard}#{key}") == written.samples[key]["image"]
    failed = next(k for k, v in written.failed.items() if v["shard"] == "00002")
    with pytest.raises(DecodeError, match="no image"):
        read_member(f"{shard}#{failed}")
    with pytest.raises(DecodeError, match="no item '0000001' in 00002.parquet"):
        read_member(f"{shard}#0000001")


def test_parquet_layout_on_s3_reads_the_same(tmp_path, s3_bucket):
    written = _write(tmp_path, "parquet")
    remote = f"{s3_bucket}/laion"
    for name in os.listdir(written.dir):
        storage.upload_file(os.path.join(written.dir, name), f"{remote}/{name}")
    reader = open_dataset(remote)
    assert type(reader) is Img2DatasetParquetReader
    samples, report = _read(reader)
    assert {s.id: (s.captions[0], s.data) for s in samples} == {
        k: (v["caption"], v["image"]) for k, v in written.samples.items()}
    assert samples[0].meta == written.samples[samples[0].id]["meta"]
    assert sorted(p.id for p in report.problems) == sorted(written.failed) and report.balanced
    key = written.keys_of("00001")[-1]
    assert read_member(f"{remote}/00001.parquet#{key}") == written.samples[key]["image"]


def test_hostile_parquet_shards_are_reported(tmp_path):
    written = _write(tmp_path, "parquet")
    no_image = make_hostile(written, "no_image", "00000")
    not_image = make_hostile(written, "not_image", "00001")
    make_hostile(written, "truncated", "00002")
    duplicate, empty, all_failed = (make_hostile(written, kind, "00001") for kind in ("duplicate", "empty",
                                                                                      "all_failed"))
    samples, report = _read(open_dataset(written.dir))
    reasons = [(p.id, p.reason[:40]) for p in report.problems if p.reason not in NO_IMAGE.values()]
    assert sorted(reasons) == sorted(
        [(no_image, "no image (success: -)"), ("00002.parquet", "not a readable Parquet file (Parquet mag"),
         (f"{empty}.parquet", "empty shard: no items")]
        + [(k, "duplicate id (an earlier shard has this ") for k in written.keys_of("00001")])
    ok = set(written.keys_of("00000")) | set(written.keys_of("00001"))
    assert sorted(s.id for s in samples) == sorted(ok - {no_image})
    assert next(s.data for s in samples if s.id == not_image) == b"\x00not an image{"  # decoding reports it
    # Failed downloads: every row of the all_failed shard, and one in each of 00000, 00001 and its copy.
    assert sum(p.reason == NO_IMAGE["failed_to_download"] for p in report.problems) == 12 + 3
    assert report.balanced and (duplicate, all_failed) == ("00003", "00005")


def test_a_corrupt_row_group_loses_its_rows_only(tmp_path):
    written = _write(tmp_path, "parquet")
    shard = os.path.join(written.dir, "00000.parquet")
    meta = pq.ParquetFile(shard).metadata
    chunk = meta.row_group(1).column(meta.num_columns - 1)  # the image column of the second row group
    with open(shard, "r+b") as f:
        f.seek(chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset)
        f.write(b"\xff" * chunk.total_compressed_size)
    samples, report = _read(Img2DatasetParquetReader([shard]))
    lost = [p for p in report.problems if p.reason.startswith("unreadable row group 1")]
    rows = pq.read_table(shard, columns=["key"]).column("key").to_pylist()
    assert sorted(p.id for p in lost) == sorted(rows[5:10]) and report.balanced
    assert sorted(s.id for s in samples) == sorted(set(written.keys_of("00000")) - set(rows[5:10]))


def test_extra_input_columns_become_json_metadata(tmp_path):
    written = _write(tmp_path, "parquet")
    shard = os.path.join(written.dir, "00000.parquet")
    table = pq.read_table(shard)
    stamps = pa.array([1_700_000_000_000] * table.num_rows, pa.timestamp("ms"))
    table = table.add_column(0, "crawled", stamps).add_column(0, "blob", pa.array([b"\x01"] * table.num_rows))
    write_parquet(shard, table.schema, table.to_pylist())
    samples, _ = _read(Img2DatasetParquetReader([shard]))
    assert samples[0].meta["crawled"] == "2023-11-14T22:13:20" and samples[0].meta["blob"] == "AQ=="
    json.dumps(samples[0].meta)


@pytest.fixture(scope="module", params=sorted(READERS))
def synth_collection(request, tiny_corpus, tmp_path_factory) -> dict:
    """The tiny images (so a trained model answers) as an img2dataset collection in each layout."""
    out = str(tmp_path_factory.mktemp(request.param) / "out")
    written = synth_as_webdataset(os.path.join(tiny_corpus, "images"), out, 2, request.param, failed_per_shard=1)
    return {"layout": request.param, "dir": out, "written": written}


def test_each_layout_indexes_with_its_metadata_and_serves_its_media(synth_collection, tiny_fast_checkpoint, tmp_path):
    from fastslow.config import IndexRunConfig, load_config
    from fastslow.index.build import build_index
    from fastslow.index.publish import load_version
    from serve_app.media import MediaReader

    collection = synth_collection
    root = str(tmp_path / "index")
    cfg = load_config(IndexRunConfig, None, [f"data.path={collection['dir']}", f"checkpoint={tiny_fast_checkpoint}",
                                             f"root={root}", "embed.partition_size=8"])
    summary = build_index(cfg)
    written = collection["written"]
    failed = 2 if collection["layout"] == "parquet" else 0
    assert (summary["read"], summary["indexed"], summary["errors"]) == (len(written) + failed, len(written), failed)
    loaded = load_version(root)
    rows = loaded.metadata.to_pylist()
    assert sorted(_key(r["id"]) for r in rows) == sorted(written)
    reader = MediaReader()
    for row in rows[:5]:
        item = written[_key(row["id"])]
        assert row["location"] == item["url"] and '"exif"' not in row["metadata"]
        body, _ = reader.get(row, loaded.manifest["model"]["collection_root"])
        assert body == item["jpeg"]
