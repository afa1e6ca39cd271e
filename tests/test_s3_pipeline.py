"""The whole pipeline with every path on s3:// (a moto server on 127.0.0.1), on an img2dataset collection (the
tiny synthetic images written as img2dataset writes its webdataset layout: tars with .parquet and _stats.json
files beside them, no splits): train a tiny Fast and Slow on the shards with no split settings, index them by
a brace pattern, serve, query over HTTP (hits carry the items' metadata and Slow's scores, /media answers a
member's exact bytes), and show the results' images on the search page. Run from an empty working directory,
which must stay empty; the credentials never appear in anything the commands print."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

from cluster.connect import free_port
from fastslow import storage
from apps.demo import load_plan
from serve_app.launch import get_json, wait_ready
from synth_shards import synth_as_webdataset

SECRET = "fastslow-test-secret-DO-NOT-PRINT"
SHARDS = 4


def run(args: list[str], cwd, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "fastslow", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"fastslow {args[0]}: {done.stderr[-3000:]}"
    assert SECRET not in done.stdout + done.stderr, f"fastslow {args[0]} printed the secret key"
    return done


def upload_tree(local_dir, uri: str) -> int:
    count = 0
    for root, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(root, name)
            storage.upload_file(path, storage.join(uri, os.path.relpath(path, local_dir)))
            count += 1
    return count


@pytest.fixture(scope="module")
def s3_pipeline(moto_endpoint, tmp_path_factory):
    """Data uploaded to a bucket; every later step reads and writes s3:// only, from an empty working directory."""
    bucket = "s3://fastslow-e2e"
    storage.s3_client().create_bucket(Bucket=bucket.removeprefix("s3://"))
    local = tmp_path_factory.mktemp("source")
    workdir = tmp_path_factory.mktemp("empty-cwd")
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET, "PYTHONPATH": os.getcwd()}
    tiny = load_plan("tiny")
    run(["synth", "--out", str(local / "synth"), "--size", "tiny", "--no-progress",
         *tiny.synth["overrides"]], workdir, env)
    written = synth_as_webdataset(str(local / "synth" / "images"), str(local / "shards"), SHARDS)
    uploaded = upload_tree(local / "shards", f"{bucket}/data/shards")
    data, runs = f"{bucket}/data/shards", f"{bucket}/runs"
    run(["train", "fast", "--data", data, "--out", f"{runs}/fast", "--no-progress", *tiny.fast["overrides"]],
        workdir, env)
    run(["train", "slow", "--data", data, "--out", f"{runs}/slow", "--no-progress", *tiny.slow["overrides"]],
        workdir, env)
    built = run(["index", "--data", f"{data}/{{00000..{SHARDS - 1:05d}}}.tar", "--checkpoint", f"{runs}/fast/checkpoint", "--root", f"{bucket}/index",
                 "index.shards=2", "embed.concurrency=1"], workdir, env)
    summary = json.loads(built.stdout[built.stdout.index("{"):])
    port = free_port()
    serving = subprocess.Popen([sys.executable, "-m", "fastslow", "serve", "--index-root", f"{bucket}/index",
                                "--fast", f"{runs}/fast/checkpoint", "--slow", f"{runs}/slow/checkpoint",
                                "--port", str(port)], cwd=workdir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=300)
        yield {"bucket": bucket, "workdir": workdir, "url": url, "summary": summary, "uploaded": uploaded,
               "serving": serving, "written": written}
    finally:
        serving.send_signal(2)
        output = serving.communicate(timeout=120)[0]
        assert SECRET not in output, "fastslow serve printed the secret key"


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url + "/search", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def test_queries_are_answered_from_s3(s3_pipeline):
    url, summary = s3_pipeline["url"], s3_pipeline["summary"]
    assert summary["read"] == summary["indexed"] == 70 and summary["errors"] == 0
    answer = _post(url, {"query": "a small red circle above a large blue square", "k": 5, "rerank": True,
                         "rerank_k": 10})
    assert len(answer["results"]) == 5 and answer["reranked"] and not answer["degraded"], answer
    written = s3_pipeline["written"]
    for hit in answer["results"]:
        # Each hit carries the collection's own reference and metadata (exif left out by default), not paths.
        item = written[hit["id"]]
        assert hit["location"] == hit["metadata"]["url"] == item["url"] and hit["caption"] == item["caption"]
        assert hit["metadata"]["sha256"] == hashlib.sha256(item["jpeg"]).hexdigest() and "exif" not in hit["metadata"]
        assert s3_pipeline["bucket"] not in json.dumps(hit)
    assert all(hit["slow_score"] is not None for hit in answer["results"])  # Slow read the members from S3
    status, health = get_json(url + "/healthz")
    assert status == 200 and health["index_version"] == summary["version"]
    for hit in answer["results"][:3]:
        with urllib.request.urlopen(f"{url}/media/{hit['id']}", timeout=30) as r:
            assert r.read() == written[hit["id"]]["jpeg"]  # the member's exact bytes, by a ranged read


def test_everything_was_written_to_s3_and_nothing_locally(s3_pipeline):
    bucket, workdir = s3_pipeline["bucket"], s3_pipeline["workdir"]
    keys = [k.removeprefix(bucket + "/") for k in storage.list_files(bucket)]
    for model in ("fast", "slow"):
        assert f"runs/{model}/checkpoint/model.safetensors" in keys and f"runs/{model}/checkpoint/config.json" in keys
    version = s3_pipeline["summary"]["version"]
    assert storage.read_text(f"{bucket}/index/CURRENT").strip() == version
    assert f"index/versions/{version}/manifest.json" in keys
    assert sum(bool(re.fullmatch(rf"index/versions/{version}/shard-\d+\.faiss", k)) for k in keys) == 2
    assert len([k for k in keys if k.startswith("data/shards/")]) == s3_pipeline["uploaded"] == 3 * SHARDS
    left = [os.path.join(root, f) for root, _, files in os.walk(workdir) for f in files]
    assert left == [], f"written under the working directory: {left[:10]}"


def test_search_page_shows_the_shard_items_images_in_headless_chromium(s3_pipeline):
    from browser import chromium, wait_for_results, wait_for_tile_images

    url, query = s3_pipeline["url"], "a large green circle"
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/")
        page.fill("#query", query)
        page.fill("#k", "6")
        page.click("#search")
        wait_for_results(page, 6)
        wait_for_tile_images(page, 150)  # every tile's image shown: a tar member read from S3 by the media route
        shown = page.locator(".tile").evaluate_all("ts => ts.map(t => t.getAttribute('data-id'))")
        written = s3_pipeline["written"]
        assert len(shown) == 6 and set(shown) <= set(written)
        assert page.locator(".tile .location").all_inner_texts() == [written[i]["url"] for i in shown]
