"""img2dataset's three output layouts read as img2dataset writes them (tests/synth_shards.py): webdataset tars,
parquet files with the image bytes in a column, and files (one folder per shard), each with its metadata
Parquet and _stats.json beside. Every successful sample is read with its caption, bytes and `.json` fields;
failed downloads (in the Parquet only) are reported; the layouts index; a Parquet item reads back alone."""

from __future__ import annotations

import hashlib
import os

import pytest
from synth_shards import synth_as_webdataset

from fastslow import storage
from fastslow.data import ReadReport, open_dataset
from fastslow.data.decode import read_sample_bytes
from fastslow.data.img2dataset_parquet import Img2DatasetParquetReader
from fastslow.data.members import read_member
from fastslow.data.webdataset import WebDatasetReader
from fastslow.data.folder import FolderReader

LAYOUTS = {"webdataset": WebDatasetReader, "parquet": Img2DatasetParquetReader, "files": FolderReader}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def collection(request, tiny_corpus, tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp(request.param) / "out")
    written = synth_as_webdataset(os.path.join(tiny_corpus, "images"), out, 2, request.param, failed_per_shard=1)
    return {"layout": request.param, "dir": out, "written": written}


def _key(sample_id: str) -> str:
    """The img2dataset key of a sample id (the files layout's ids are paths: 00000/000000012.jpg)."""
    return os.path.basename(sample_id).split(".")[0]


def test_each_layout_reads_every_sample_with_its_caption_bytes_and_metadata(collection):
    reader = open_dataset(collection["dir"])  # auto: the layout is recognised, its bookkeeping files are not items
    assert type(reader) is LAYOUTS[collection["layout"]]
    report = ReadReport()
    samples = list(reader.samples(None, report))
    written = collection["written"]
    assert sorted(_key(s.id) for s in samples) == sorted(written)
    for s in samples:
        item = written[_key(s.id)]
        assert s.captions == [item["caption"]] and read_sample_bytes(s) == item["jpeg"]
        assert s.meta["url"] == item["url"] and s.meta["status"] == "success"
        assert s.meta["sha256"] == hashlib.sha256(item["jpeg"]).hexdigest() and s.meta["width"] > 0
    if collection["layout"] == "parquet":  # the failed downloads are rows with no image: reported
        assert report.read == len(samples) + 2
        assert sorted(p.reason for p in report.problems) == ["no image (failed_to_download: HTTP Error 404: Not Found)"] * 2
    else:  # the tars and folders hold the successful samples only
        assert report.read == len(samples) and not report.problems


def test_a_parquet_item_reads_back_alone_locally_and_on_s3(tiny_corpus, tmp_path, s3_bucket):
    """(A tar member's ranged read: tests/test_tar_members.py.)"""
    written = synth_as_webdataset(os.path.join(tiny_corpus, "images"), str(tmp_path), 2, "parquet", 1)
    shard = os.path.join(str(tmp_path), "00001.parquet")
    key, item = next((k, v) for k, v in written.items() if v["shard"] == "00001")
    assert read_member(f"{shard}#{key}") == item["jpeg"]
    remote = f"{s3_bucket}/laion/00001.parquet"
    storage.upload_file(shard, remote)
    assert read_member(f"{remote}#{key}") == item["jpeg"]
    samples = list(open_dataset(remote).samples(None, ReadReport()))
    assert {s.id for s in samples} == {k for k, v in written.items() if v["shard"] == "00001"}


def test_each_layout_indexes_with_its_metadata_and_serves_its_media(collection, tiny_fast_checkpoint, tmp_path):
    from fastslow.config import IndexRunConfig, load_config
    from fastslow.index.build import build_index
    from fastslow.index.publish import load_version
    from serve_app.media import MediaReader

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
