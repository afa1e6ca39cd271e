"""The search app the way users run it: deployed from configs/serve_synth.yaml on a local Ray (as `serve deploy`
does), queried over HTTP on 127.0.0.1.

A tiny Fast and Slow are trained with the CLI and two index versions of the synthetic images are built
with `ray job submit` of the index job (all items; the test split only). The answers must equal the
in-process pipeline on the same version; bad requests get 4xx with a message; an injected re-ranker
fault degrades answers to the Fast order; a version swap under a stream of requests loses none; /media
serves the live version's items and nothing else; the search page works in headless Chromium.
"""

import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import urllib.parse

import numpy as np
import pytest
from browser import chromium, wait_for_tile_images
from conftest import REPO
from PIL import Image
from test_jobs_training import TINY_FAST, TINY_SLOW, job_id, job_summary, wait_for

from cluster.connect import free_port
from fastslow.index.publish import load_version
from fastslow.search.pipeline import SearchPipeline, SearchRequest
from serve_app.deploy import deploy, get_json, load_serve_config, wait_ready, with_settings

QUERIES = ["a red circle above a blue square", "a small green star", "a large white triangle left of a cross"]


def _cli(*args):
    subprocess.run([sys.executable, "-m", "fastslow", *args, "--no-progress"], check=True, capture_output=True,
                   timeout=300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, submit_module_job):
    """Checkpoints and two published index versions: {'fast', 'slow', 'root', 'v1' (all 70 items), 'v2' (test 20)}."""
    out = tmp_path_factory.mktemp("serve")
    data = out / "synth"
    _cli("synth", "--out", str(data), "--size", "tiny", "--seed", "5")
    slash_id, symlink_id = _odd_media(data / "images", out / "outside")
    _cli("train", "fast", "--data", str(data / "images"), "--out", str(out / "fast"), *TINY_FAST,
         "train.epochs=3", "train.batch_size=16")
    _cli("train", "slow", "--data", str(data / "images"), "--out", str(out / "slow"), *TINY_SLOW,
         "train.epochs=3", "train.batch_size=16")
    fast, root, versions = str(out / "fast" / "checkpoint"), str(out / "index"), []
    for extra in ([], ["split=test"]):
        job = job_id("serve-index")
        client = submit_module_job(job, "jobs.build_index", "--data", str(data / "images"), "--checkpoint", fast,
                            "--root", root, "index.shards=2", *extra)
        status, logs = wait_for(client, job)
        assert status == "SUCCEEDED", logs[-3000:]
        versions.append(job_summary(logs)["version"])
    return {"fast": fast, "slow": str(out / "slow" / "checkpoint"), "root": root, "v1": versions[0],
            "v2": versions[1], "images": str(data / "images"), "slash_id": slash_id, "symlink_id": symlink_id}


def _odd_media(images, outside) -> tuple[str, str]:
    """Give one image an id with a '/' (a Karpathy `filepath`) and make another a symlink to a copy outside the
    collection (indexed like any other, never served); (the first's id, the second's id)."""
    dataset = next(images.glob("dataset_*.json"))
    entries = json.loads(dataset.read_text())
    moved, linked = entries["images"][1], entries["images"][2]
    (images / "sub").mkdir()
    os.replace(images / moved["filename"], images / "sub" / moved["filename"])
    moved["filepath"] = "sub"
    dataset.write_text(json.dumps(entries))
    outside.mkdir()
    os.replace(images / linked["filename"], outside / linked["filename"])
    os.symlink(outside / linked["filename"], images / linked["filename"])
    stem = lambda e: os.path.splitext(e["filename"])[0]  # noqa: E731
    return f"sub/{stem(moved)}", stem(linked)


@pytest.fixture(scope="module")
def app(stack, ray_head):
    """The app deployed from the repository's Serve YAML (paths and port filled in), serving version v1."""
    config = with_settings(
        load_serve_config(os.path.join(REPO, "configs", "serve_synth.yaml")),
        args={"index_root": stack["root"], "fast_checkpoint": stack["fast"], "slow_checkpoint": stack["slow"]},
        port=free_port(), deployments={"Ingress": {"user_config": {"index_version": stack["v1"]}}})
    url = f"http://127.0.0.1:{config['http_options']['port']}"

    def redeploy(version=None, fault=None):
        """Deploy again with another index version and/or re-ranker fault (Serve calls reconfigure())."""
        changed = with_settings(config, deployments={"Ingress": {"user_config": {"index_version": version or stack["v1"]}},
                                                     "SlowReranker": {"user_config": {"fault": fault}}})
        deploy(changed, ray_head)

    deploy(config, ray_head)
    try:
        wait_ready(url, timeout=400, version=stack["v1"])
        yield {"url": url, "redeploy": redeploy, **stack}
    finally:
        ray = os.path.join(os.path.dirname(sys.executable), "serve")
        # Serve holds CPUs that later Ray jobs would wait for.
        subprocess.run([ray, "shutdown", "-y", "--address", ray_head], capture_output=True, timeout=120)


def post(url: str, body, timeout: float = 60.0) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/search", data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _ids(answer: dict) -> list[str]:
    return [h["id"] for h in answer["results"]]


def get_raw(url: str, path: str) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET of `path` sent exactly as given (no client-side normalisation)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def media_path(item_id: str) -> str:
    return "/media/" + urllib.parse.quote(item_id, safe="")


def test_answers_equal_the_in_process_pipeline(app):
    pipeline = SearchPipeline(app["root"], app["fast"], app["slow"], version=app["v1"])
    for query in QUERIES:
        for rerank in (True, False):
            status, got = post(app["url"], {"query": query, "k": 5, "rerank": rerank, "rerank_k": 12})
            assert status == 200, got
            want = pipeline.search(SearchRequest(query, k=5, rerank=rerank, rerank_k=12))
            assert got["index_version"] == app["v1"] and not got["degraded"] and not got["partial"]
            assert got["reranked"] is rerank and got["shards"] == {"answered": [0, 1], "failed": {}}
            assert _ids(got) == [h["id"] for h in want["results"]]
            for g, w in zip(got["results"], want["results"]):
                assert g["fast_score"] == pytest.approx(w["fast_score"], abs=1e-5)
                assert (g["slow_score"] is None) is (not rerank)
                if rerank:
                    assert g["slow_score"] == pytest.approx(w["slow_score"], abs=1e-6)
            assert set(got["timings_ms"]) == {"encode", "retrieve", "rerank", "total"}

        # Without re-ranking the answer is Fast's order: the exact top 5 by Fast score over every item.
        _, fast = post(app["url"], {"query": query, "k": 5, "rerank": False})
        scores = [h["fast_score"] for h in fast["results"]]
        assert scores == sorted(scores, reverse=True)
        _, deeper = post(app["url"], {"query": query, "k": 40, "rerank": False})
        assert _ids(deeper)[:5] == _ids(fast) and len(deeper["results"]) == 40
        # Re-ranking reorders Fast's top rerank_k: the same items, Slow's order.
        _, reranked = post(app["url"], {"query": query, "k": 12, "rerank": True, "rerank_k": 12})
        assert sorted(_ids(reranked)) == sorted(_ids(deeper)[:12])
        slow = [h["slow_score"] for h in reranked["results"]]
        assert slow == sorted(slow, reverse=True)


def test_bad_requests_get_4xx_that_say_what_is_wrong(app):
    cases = [
        ({"k": 5}, "query"),
        ({"query": ""}, "query: is empty"),
        ({"query": "   "}, "query: is empty"),
        ({"query": "x" * 513}, "at most 512"),
        ({"query": "a cat", "k": 0}, "k: 0 is out of range"),
        ({"query": "a cat", "k": 101}, "k: 101 is out of range (1 to 100)"),
        ({"query": "a cat", "rerank_k": 1000}, "rerank_k: 1000 is out of range"),
        ({"query": "a cat", "k": "ten"}, "k: Input should be a valid integer"),
        ({"query": 7}, "query: Input should be a valid string"),
        ({"query": "a cat", "colour": "red"}, "colour: Extra inputs are not permitted"),
        (b"{not json", "JSON"),
        (["a cat"], "valid dictionary"),
    ]
    for body, needle in cases:
        status, answer = post(app["url"], body)
        assert 400 <= status < 500, (body, status, answer)
        assert isinstance(answer.get("detail"), str) and needle in answer["detail"], (body, answer)
    status, health = get_json(app["url"] + "/healthz")
    assert status == 200 and health["limits"]["max_k"] == 100
    status, openapi = get_json(app["url"] + "/openapi.json")
    assert status == 200 and "/search" in openapi["paths"] and "SearchBody" in json.dumps(openapi)
    with urllib.request.urlopen(app["url"] + "/docs", timeout=30) as r:
        assert r.status == 200 and b"swagger" in r.read().lower()


def test_reranker_faults_degrade_to_the_fast_order(app):
    query = QUERIES[0]
    _, fast = post(app["url"], {"query": query, "k": 6, "rerank": False})
    try:
        app["redeploy"](fault="error")
        deadline = time.time() + 120
        while time.time() < deadline and get_json(app["url"] + "/readyz")[0] != 503:
            time.sleep(0.5)
        assert get_json(app["url"] + "/readyz")[1]["parts"]["reranker"] is False
        for _ in range(3):
            status, got = post(app["url"], {"query": query, "k": 6, "rerank": True, "rerank_k": 10})
            assert status == 200, got
            assert got["degraded"] and not got["reranked"] and "re-ranker failed" in got["degraded_reason"]
            assert _ids(got) == _ids(fast) and all(h["slow_score"] is None for h in got["results"])

        app["redeploy"](fault="slow")  # stalls past the app's rerank_timeout_s
        deadline, got = time.time() + 120, {}
        while time.time() < deadline and "timed out" not in (got.get("degraded_reason") or ""):
            status, got = post(app["url"], {"query": query, "k": 6, "rerank": True})
            assert status == 200 and got["degraded"], got
        assert "re-ranker timed out after 5 s" in got["degraded_reason"] and _ids(got) == _ids(fast)
    finally:
        app["redeploy"](fault=None)
    wait_ready(app["url"], timeout=120)
    status, got = post(app["url"], {"query": query, "k": 6, "rerank": True})
    assert status == 200 and not got["degraded"] and got["reranked"]


def test_index_version_swap_under_load_loses_no_request(app):
    ids = {v: set(load_version(app["root"], app[v]).metadata.column("id").to_pylist()) for v in ("v1", "v2")}
    answers, failures, stop = [], [], threading.Event()

    def stream(n):
        while not stop.is_set():
            try:
                status, got = post(app["url"], {"query": QUERIES[n % len(QUERIES)], "k": 8, "rerank": n % 2 == 0})
                (answers if status == 200 else failures).append(got if status == 200 else (status, got))
            except Exception as e:  # noqa: BLE001 - a lost request is what this test looks for
                failures.append(repr(e))

    threads = [threading.Thread(target=stream, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        app["redeploy"](version=app["v2"])
        wait_ready(app["url"], timeout=120, version=app["v2"])
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert not failures, failures[:3]
    seen = {a["index_version"] for a in answers}
    assert seen == {app["v1"], app["v2"]}, seen
    for a in answers:  # each answer is wholly from the version it names, and complete
        assert set(_ids(a)) <= ids[{app["v1"]: "v1", app["v2"]: "v2"}[a["index_version"]]]
        assert len(a["results"]) == 8 and not a["partial"]
    assert answers[-1]["index_version"] == app["v2"]
    # /media follows the live version: an item of v1 only is gone, one of v2 is there.
    assert get_raw(app["url"], media_path(sorted(ids["v1"] - ids["v2"])[0]))[0] == 404
    assert get_raw(app["url"], media_path(sorted(ids["v2"] - {app["symlink_id"]})[0]))[0] == 200
    app["redeploy"](version=app["v1"])
    wait_ready(app["url"], timeout=120, version=app["v1"])


@pytest.mark.faults
@pytest.mark.timeout(600)
def test_media_serves_indexed_items_and_nothing_else(app, fault_record):
    status, got = post(app["url"], {"query": QUERIES[1], "k": 6, "rerank": False})
    assert status == 200, got
    meta = {r["id"]: r for r in load_version(app["root"], app["v1"]).metadata.to_pylist()}
    assert load_version(app["root"], app["v1"]).manifest["model"]["collection_root"] == app["images"]
    # The symlinked item may be among the hits: it is checked below, refused.
    for item_id in [i for i in _ids(got) if i != app["symlink_id"]] + [app["slash_id"]]:
        for path in (media_path(item_id), "/media/" + item_id):  # '/' in an id may be sent encoded or not
            status, headers, body = get_raw(app["url"], path)
            assert status == 200, (path, body[:300])
            assert headers["content-type"] == "image/png" and headers["cache-control"] == "private, max-age=3600"
            with open(meta[item_id]["uri"], "rb") as f:
                stored = f.read()
            assert body == stored
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), np.asarray(Image.open(io.BytesIO(stored))))

    uri = meta[_ids(got)[0]]["uri"]
    refused = ["/media/..%2F..%2Fetc%2Fpasswd", "/media/../../etc/passwd", "/media//etc/passwd",
               "/media/%2Fetc%2Fpasswd", "/media/%2e%2e/%2e%2e/etc/passwd", "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
               "/media/%252e%252e%252fetc%252fpasswd", "/media/..%5c..%5cetc%5cpasswd", "/media/" + uri,
               media_path(uri), "/media/no-such-item", "/media/", "/media/" + "x" * 5000,
               media_path(app["symlink_id"])]  # indexed, but its file resolves outside the collection
    for path in refused:
        status, headers, body = get_raw(app["url"], path)
        assert status == 404, (path, status, body[:300])
        assert headers["cache-control"] == "no-store" and isinstance(json.loads(body)["detail"], str), path
    status, _, body = get_raw(app["url"], media_path(app["symlink_id"]))
    assert "outside the collection" in json.loads(body)["detail"]
    fault_record("input", "media paths: traversal, absolute, encoded, symlink out, unknown id", tried=len(refused),
                 refused=len(refused), five_xx=0)


def test_search_page_in_headless_chromium(app):
    url, query = app["url"], QUERIES[0]
    with chromium() as browser:
        from playwright.sync_api import expect

        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        requests, errors = [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.fill("#query", query)
        page.fill("#k", "8")
        page.fill("#rerank-k", "12")
        page.click("#search")
        # Polled from here: the page's CSP (no 'unsafe-eval') refuses Playwright's in-page wait_for_function.
        expect(page.locator(".tile")).to_have_count(8, timeout=60_000)
        wait_for_tile_images(page, 150)
        _, want = post(url, {"query": query, "k": 8, "rerank": True, "rerank_k": 12})
        tiles = page.locator(".tile")
        assert [tiles.nth(i).get_attribute("data-id") for i in range(8)] == _ids(want)
        assert "Slow re-ranked" in page.inner_text("#status") and "total" in page.inner_text("#timings")
        assert app["v1"] in page.inner_text("#version") and not page.is_visible("#notice")
        assert all(t != "slow \u2014" for t in page.locator(".tile .slow").all_inner_texts())
        assert page.locator(".tile .caption").first.inner_text() == want["results"][0]["caption"]
        shot = os.path.join(REPO, "out", "test-artifacts", "search-page.png")
        os.makedirs(os.path.dirname(shot), exist_ok=True)
        page.screenshot(path=shot, full_page=True)
        print(f"search page screenshot: {shot}")

        page.uncheck("#rerank")
        page.click("#search")
        expect(page.locator("#status")).to_contain_text("Fast order", timeout=60_000)
        _, fast = post(url, {"query": query, "k": 8, "rerank": False})
        assert [tiles.nth(i).get_attribute("data-id") for i in range(8)] == _ids(fast)
        assert page.locator(".tile .slow").all_inner_texts() == ["slow \u2014"] * 8

        # A degraded and partial answer (made up here: the real ones are tested above) is shown as such.
        page.route("**/search", lambda route: route.fulfill(json={
            **want, "reranked": False, "degraded": True, "degraded_reason": "re-ranker timed out after 5 s",
            "partial": True, "shards": {"answered": [0], "failed": {"1": "shard 1 timed out after 5 s"}}}))
        page.click("#search")
        page.wait_for_selector("#notice:not([hidden])", timeout=30_000)
        notice = page.inner_text("#notice")
        assert "re-ranker timed out after 5 s" in notice and "shard 1 timed out" in notice
        page.unroute("**/search")

        page.fill("#query", "   ")  # passes the form's `required`; the app answers 422
        page.click("#search")
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert "422" in page.inner_text("#error") and "query: is empty" in page.inner_text("#error")
    assert not errors, errors
    # Nothing leaves the app's origin: the images are shown from blob: URLs of that origin.
    origins = (url + "/", "blob:" + url + "/")
    assert requests and all(r.startswith(origins) for r in requests), [r for r in requests if not r.startswith(origins)]
