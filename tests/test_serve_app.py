"""The search app the way users run it: deployed from configs/serve_synth.yaml on a local Ray (as `serve deploy`
does), queried over HTTP on 127.0.0.1.

The tiny Fast and Slow and two index versions of the tiny synthetic images (built with `ray job submit` of the
index job: all items; the test split only) are conftest's `serve_stack`; the app is conftest's `app`. The answers
must equal the in-process pipeline on the same version; bad requests get 4xx with a message; an injected re-ranker
fault degrades answers to the Fast order; a version swap under a stream of requests loses none. /media and the
search page: tests/test_serve_app_page.py.
"""

import json
import threading
import time
import urllib.request

import pytest
from serve_helpers import QUERIES, get_raw, ids, media_path, post

from fastslow.index.publish import load_version
from fastslow.search.pipeline import SearchPipeline, SearchRequest
from serve_app.launch import get_json, wait_ready


def test_answers_equal_the_in_process_pipeline(app):
    pipeline = SearchPipeline(app["root"], app["fast"], app["slow"], version=app["v1"])
    for query in QUERIES:
        for rerank in (True, False):
            status, got = post(app["url"], {"query": query, "k": 5, "rerank": rerank, "rerank_k": 12})
            assert status == 200, got
            want = pipeline.search(SearchRequest(query, k=5, rerank=rerank, rerank_k=12))
            assert got["index_version"] == app["v1"] and not got["degraded"] and not got["partial"]
            assert got["reranked"] is rerank and got["shards"] == {"answered": [0, 1], "failed": {}}
            assert ids(got) == [h["id"] for h in want["results"]]
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
        assert ids(deeper)[:5] == ids(fast) and len(deeper["results"]) == 40
        # Re-ranking reorders Fast's top rerank_k: the same items, Slow's order.
        _, reranked = post(app["url"], {"query": query, "k": 12, "rerank": True, "rerank_k": 12})
        assert sorted(ids(reranked)) == sorted(ids(deeper)[:12])
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
            assert ids(got) == ids(fast) and all(h["slow_score"] is None for h in got["results"])

        app["redeploy"](fault="slow")  # stalls past the app's rerank_timeout_s
        deadline, got = time.time() + 120, {}
        while time.time() < deadline and "timed out" not in (got.get("degraded_reason") or ""):
            status, got = post(app["url"], {"query": query, "k": 6, "rerank": True})
            assert status == 200 and got["degraded"], got
        assert "re-ranker timed out after 5 s" in got["degraded_reason"] and ids(got) == ids(fast)
    finally:
        app["redeploy"](fault=None)
    wait_ready(app["url"], timeout=120)
    status, got = post(app["url"], {"query": query, "k": 6, "rerank": True})
    assert status == 200 and not got["degraded"] and got["reranked"]


def test_index_version_swap_under_load_loses_no_request(app):
    version_ids = {v: set(load_version(app["root"], app[v]).metadata.column("id").to_pylist()) for v in ("v1", "v2")}
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
        assert set(ids(a)) <= version_ids[{app["v1"]: "v1", app["v2"]: "v2"}[a["index_version"]]]
        assert len(a["results"]) == 8 and not a["partial"]
    assert answers[-1]["index_version"] == app["v2"]
    # /media follows the live version: an item of v1 only is gone, one of v2 is there.
    assert get_raw(app["url"], media_path(sorted(version_ids["v1"] - version_ids["v2"])[0]))[0] == 404
    assert get_raw(app["url"], media_path(sorted(version_ids["v2"] - {app["symlink_id"]})[0]))[0] == 200
    app["redeploy"](version=app["v1"])
    wait_ready(app["url"], timeout=120, version=app["v1"])
