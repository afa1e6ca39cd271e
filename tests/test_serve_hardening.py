"""The search app's guards and faults, deployed: the API key, the request-body limit, Serve's backpressure answer
(503 with Retry-After), a property-based fuzz of the HTTP API, and replicas killed under load, all on 127.0.0.1.

The app is conftest's `guarded`: deployed from configs/serve_synth.yaml with a key in the replicas' environment and
a small ingress queue (the checkpoints and index versions of conftest's `serve_stack`). The middleware alone, in
process: tests/test_serve_guard.py.
"""

import base64
import http.client
import json
import os
import urllib.parse

import pytest
from browser import chromium, wait_for_results, wait_for_tile_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import (KEY, QUERIES, check_answer, check_backpressure, log_dirs, replica_urls, request,
                           search_body, stream_through_kill)

from serve_app.launch import get_json, wait_ready

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]


def test_api_key_required_except_page_and_health(guarded):
    url = guarded["url"]
    for key in (None, "wrong", KEY[:-1]):
        status, headers, body = request(url, "POST", "/search", search_body(), key=key)
        assert status == 401 and headers["www-authenticate"].startswith("ApiKey"), (status, body)
        assert json.loads(body)["detail"] in ("missing X-API-Key header", "wrong API key")
        for path in ("/docs", "/openapi.json", "/media/anything"):
            assert request(url, "GET", path, key=key)[0] == 401, path
    status, _, body = request(url, "POST", "/search", search_body())
    assert status == 200 and len(json.loads(body)["results"]) == 5
    status, _, body = request(url, "GET", "/", key=None)
    assert status == 200 and b'id="api-key"' in body
    status, health = get_json(url + "/healthz")
    assert status == 200 and health["api_key_required"] is True
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json", "/"):
        status, _, body = request(url, "GET", path)
        assert status == 200 and KEY.encode() not in body, path
    # Nor in the app's logs (replicas and proxy).
    logs = [os.path.join(d, f) for root in log_dirs() for d, _, files in os.walk(os.path.join(root, "serve"))
            for f in files]
    assert logs and not [f for f in logs if KEY.encode() in open(f, "rb").read()]


def test_search_page_asks_for_the_key_in_headless_chromium(guarded):
    with chromium() as browser:
        from playwright.sync_api import expect

        page, errors = browser.new_page(viewport={"width": 1280, "height": 1000}), []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(guarded["url"] + "/")
        expect(page.locator("#key-label")).to_be_visible(timeout=30_000)
        page.fill("#query", QUERIES[0])
        page.fill("#k", "8")
        page.fill("#rerank-k", "12")
        page.click("#search")
        expect(page.locator("#error")).to_contain_text("401", timeout=30_000)
        page.fill("#api-key", KEY)  # kept in sessionStorage, sent as X-API-Key
        page.click("#search")
        wait_for_results(page, 8)
        # <img> cannot send the key: the page fetches each image with it and shows a blob: URL.
        wait_for_tile_images(page, 180)  # the page backs off for about 2 min
    assert not errors, errors


def test_request_bodies_over_the_limit_get_413(guarded):
    url = guarded["url"]
    # max_body_bytes (16384) plus the room for an image of limits.max_image_bytes (3000 here) in base64 (4000)
    status, health = get_json(url + "/healthz")
    assert status == 200 and health["max_body_bytes"] == 16384 + 4000
    status, _, body = request(url, "POST", "/search", search_body("x" * 21000))
    assert status == 413 and "at most 20384" in json.loads(body)["detail"]
    # Chunked, with no Content-Length: refused once the body passes the limit.
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        chunks = iter([b'{"query": "', b"y" * 11000, b"y" * 11000, b'"}'])
        conn.request("POST", "/search", body=chunks, headers={"X-API-Key": KEY, "Content-Type": "application/json"},
                     encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 413 and "over 20384 bytes" in json.loads(r.read())["detail"]
    finally:
        conn.close()
    status, _, body = request(url, "POST", "/search", search_body("z" * 600))  # under the limit: the app's own 422
    assert status == 422 and "at most 512" in json.loads(body)["detail"]


# Fuzz: JSON of any shape, fields of the wrong types, huge and odd strings, raw bytes, odd media ids and methods.
JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=10)
IDS = st.text(max_size=80) | st.sampled_from(["..", "../../etc/passwd", "%2e%2e", "\x00", "a/b/../c", "x" * 3000])
HUGE = st.integers(0, 20000).map(lambda n: "\u00e9\u732b" * n)
B64 = st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())
OPS = st.dictionaries(st.sampled_from(["eq", "in", "gte", "lte", "prefix", "ne"]),
                      JUNK | st.integers() | st.lists(st.integers() | st.text(max_size=5), max_size=3), max_size=3)
FILTERS = st.dictionaries(st.sampled_from(["width", "height", "media", "id", "duration", "colour"]), OPS | JUNK,
                          max_size=3)
FIELDS = {"query": st.text(max_size=600) | HUGE | JUNK, "k": st.integers(-10, 300) | JUNK,
          "rerank": st.booleans() | JUNK, "rerank_k": st.integers(-10, 300) | JUNK, "colour": JUNK,
          "image": B64 | st.text(max_size=60) | JUNK, "like": st.sampled_from(["00001", "sub/00002"]) | IDS | JUNK,
          "image_weight": st.floats() | JUNK, "filter": FILTERS | JUNK, "explain": st.booleans() | JUNK}
TRICKY = [b"", b"null", b"[]", b'"a cat"', b"{not json", b'{"query": "\\ud800 cat"}', b'{"query": "a", "k": NaN}',
          b'{"query": "a", "k": 1e400}', b'{"query": "a", "k": 1.5}', b'{"query": "a\\u0000b"}', b"\xff\xfe{}",
          b'{"query": "a", "query": 3}', b"[" * 5000 + b"]" * 5000, b'{"query": {"$ne": 1}}', b'{"like": "\\ud800"}',
          b'{"query": "a", "filter": {"id": {"prefix": "\\udfff"}}}']
BODIES = (st.fixed_dictionaries({}, optional=FIELDS).map(lambda d: json.dumps(d).encode())
          | JUNK.map(lambda j: json.dumps(j).encode()) | st.binary(max_size=300) | st.sampled_from(TRICKY))
CASES = (st.tuples(st.just("POST"), st.just("/search"), BODIES)
         | st.tuples(st.just("GET"), IDS.map(lambda i: "/media/" + urllib.parse.quote(i, safe="/")), st.none())
         | st.tuples(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
                     st.sampled_from(["/search", "/media/x", "/healthz", "/filters", "/nope", "/search/../healthz", "/%ff"]),
                     st.none() | BODIES))


def test_fuzz_http_api_no_5xx_and_json_4xx(guarded, fault_record):
    statuses = []

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(case=CASES, with_key=st.sampled_from([True, True, True, False]))
    def one(case, with_key):
        statuses.append(check_answer(guarded["url"], *case, key=KEY if with_key else None))

    one()
    fault_record("input", "HTTP requests generated by hypothesis (any JSON, wrong types, huge strings, raw bytes)",
                 tried=len(statuses), refused=sum(s >= 400 for s in statuses), five_xx=0)


def test_tricky_bodies_get_json_4xx(guarded, fault_record):
    """The odd bodies the fuzz may miss, every time (a lone surrogate in the query was a 500)."""
    statuses = {body: check_answer(guarded["url"], "POST", "/search", body) for body in TRICKY}
    assert statuses[b'{"query": "\\ud800 cat"}'] == 422 and statuses[b'{"query": "a\\u0000b"}'] == 200
    fault_record("input", "HTTP bodies that broke APIs before (lone surrogate, NaN, 1e400, deep nesting, ...)",
                 tried=len(statuses), refused=sum(s >= 400 for s in statuses.values()), five_xx=0)


def test_backpressure_is_503_with_retry_after(guarded, fault_record):
    """Past the ingress's max_ongoing_requests (4) + max_queued_requests (4), Serve answers 503 + Retry-After."""
    refused = check_backpressure(guarded["url"])
    fault_record("input", "40 slow requests at once at Serve's proxy", tried=40, refused=refused, five_xx=0)


def test_direct_ingress_port_has_the_same_key_and_backpressure(guarded, ray_head, fault_record):
    """A load balancer may target the replica's own port (no proxy): the key and the limits hold there too."""
    (url,) = replica_urls(ray_head)
    assert url != guarded["url"]
    for key in (None, KEY[:-1]):
        status, headers, raw = request(url, "POST", "/search", search_body(), key=key)
        assert status == 401 and "x-api-key" in headers.get("www-authenticate", "").lower(), (status, raw[:200])
    assert request(url, "GET", "/healthz", key=None)[0] == 200
    status, _, raw = request(url, "POST", "/search", search_body())
    assert status == 200 and json.loads(raw)["index_version"] == guarded["v1"]
    assert request(url, "POST", "/search", search_body("x" * 21000))[0] == 413
    refused = check_backpressure(url)
    fault_record("input", "40 slow requests at once at the ingress replica's own port", tried=40, refused=refused,
                 five_xx=0)


def test_every_reranker_replica_killed_degrades_then_recovers(guarded, ray_head, fault_record):
    body = search_body(k=6, rerank=True, rerank_k=12)
    after = stream_through_kill(guarded, body, ray_head, "SlowReranker", hurt=lambda a: a["degraded"],
                                 healed=lambda a: a["reranked"] and not a["degraded"], fault_record=fault_record)
    _, fast = request(guarded["url"], "POST", "/search", search_body(k=6, rerank=False))[::2]
    fast_ids = [h["id"] for h in json.loads(fast)["results"]]
    for a in after:  # while it is down: the Fast order, said so
        assert a["reranked"] or ([h["id"] for h in a["results"]] == fast_ids and a["degraded_reason"]), a
    wait_ready(guarded["url"], timeout=60)


def test_a_shard_replica_killed_gives_partial_answers_then_recovers(guarded, ray_head, fault_record):
    body = search_body(k=6, rerank=False)
    after = stream_through_kill(guarded, body, ray_head, "ShardRetriever1", hurt=lambda a: a["partial"],
                                 healed=lambda a: not a["partial"], fault_record=fault_record)
    for a in after:
        assert a["shards"]["answered"] == ([0] if a["partial"] else [0, 1]) and len(a["results"]) == 6, a
        assert not a["partial"] or "shard 1" in a["shards"]["failed"]["1"], a
    wait_ready(guarded["url"], timeout=60)
