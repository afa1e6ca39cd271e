"""The search app's guards and faults: the API key, the request-body limit, Serve's backpressure answer (503
with Retry-After), a property-based fuzz of the HTTP API, and replicas killed under load, all on 127.0.0.1.

The middleware alone is tested first (no Ray); then the app is deployed once from configs/serve_synth.yaml with a
key in the replicas' environment and a small ingress queue (the checkpoints and index versions of
tests/test_serve_app.py's `stack`).
"""

import asyncio
import glob
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import pytest
from browser import chromium, wait_for_tile_images
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve_app import QUERIES, stack  # noqa: F401 - the module's checkpoints and index versions

from cluster.connect import free_port
from fastslow.index.publish import load_version
from serve_app.deploy import deploy, get_json, load_serve_config, wait_ready, with_settings
from serve_app.guard import Guard, GuardSettings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

KEY = "fs-" + uuid.uuid4().hex  # unique: searched for in every body and log below


def _asgi(guard, method: str, path: str, headers: dict, chunks: list[bytes]) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request through `guard` in front of an app that reads the body, then 200s."""
    async def inner(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    pending, sent = list(chunks) or [b""], []

    async def receive():
        return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(Guard(inner, guard)(scope, receive, send))
    return (sent[0]["status"], {k.decode(): v.decode() for k, v in sent[0]["headers"]},
            b"".join(m.get("body", b"") for m in sent[1:]))


def test_guard_middleware_key_and_body_limit(monkeypatch):
    settings_ = GuardSettings()
    monkeypatch.delenv("FS_TEST_KEY", raising=False)
    settings_.configure("FS_TEST_KEY", 2048)
    assert settings_.key is None and _asgi(settings_, "POST", "/search", {}, [b"{}"])[0] == 200  # no key: open
    monkeypatch.setenv("FS_TEST_KEY", KEY)
    settings_.configure("FS_TEST_KEY", 2048)
    for headers, why in (({}, "missing X-API-Key header"), ({"X-API-Key": KEY[:-1]}, "wrong API key"),
                         ({"X-API-Key": KEY + "x"}, "wrong API key")):
        status, got, body = _asgi(settings_, "POST", "/search", headers, [b"{}"])
        assert status == 401 and json.loads(body) == {"detail": why} and "x-api-key" in got["www-authenticate"].lower()
        assert KEY.encode() not in body
    for path in ("/", "/healthz", "/readyz"):
        assert _asgi(settings_, "GET", path, {}, [])[0] == 200
    for path in ("/docs", "/openapi.json", "/media/x", "/search/"):
        assert _asgi(settings_, "GET", path, {}, [])[0] == 401
    ok = {"X-API-Key": KEY}
    assert _asgi(settings_, "POST", "/search", ok, [b"x" * 2048])[0] == 200
    status, _, body = _asgi(settings_, "POST", "/search", {**ok, "Content-Length": "2049"}, [b"x" * 2049])
    assert status == 413 and "2049 bytes, at most 2048" in json.loads(body)["detail"]
    status, _, body = _asgi(settings_, "POST", "/search", ok, [b"x" * 1500, b"x" * 1500])  # chunked: no length
    assert status == 413 and "over 2048 bytes" in json.loads(body)["detail"]
    assert _asgi(settings_, "POST", "/search", {**ok, "Content-Length": "zz"}, [b""])[0] == 400


@pytest.fixture(scope="module")
def guarded(stack, ray_head):  # noqa: F811 - pytest's fixture, imported above
    """The app with an API key (in the replicas' environment only) and a small ingress queue, serving v1."""
    ingress = {"user_config": {"index_version": stack["v1"]}, "max_ongoing_requests": 4, "max_queued_requests": 4,
               "backpressure_config": {"retry_after_s": 1}}
    config = with_settings(
        load_serve_config(os.path.join(REPO, "configs", "serve_synth.yaml")),
        args={"index_root": stack["root"], "fast_checkpoint": stack["fast"], "slow_checkpoint": stack["slow"]},
        port=free_port(), deployments={"Ingress": ingress}, env={"FASTSLOW_API_KEY": KEY})
    assert KEY not in json.dumps(config["applications"][0]["args"])
    url = f"http://127.0.0.1:{config['http_options']['port']}"
    deploy(config, ray_head)
    try:
        wait_ready(url, timeout=400, version=stack["v1"])  # /readyz is open: load balancers probe it
        yield {"url": url, **stack}
    finally:
        serve = os.path.join(os.path.dirname(sys.executable), "serve")
        subprocess.run([serve, "shutdown", "-y", "--address", ray_head], capture_output=True, timeout=120)


def request(url: str, method: str, path: str, body: bytes | None = None, key: str | None = KEY,
            headers: dict | None = None, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """(status, lower-cased headers, body) of one request sent as given."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    sent = {**({"X-API-Key": key} if key else {}), **({"Content-Type": "application/json"} if body else {}),
            **(headers or {})}
    try:
        conn.request(method, path, body=body, headers=sent)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _search_body(query: str = QUERIES[0], **more) -> bytes:
    return json.dumps({"query": query, "k": 5, **more}).encode()


def test_api_key_required_except_page_and_health(guarded):
    url = guarded["url"]
    for key in (None, "wrong", KEY[:-1]):
        status, headers, body = request(url, "POST", "/search", _search_body(), key=key)
        assert status == 401 and headers["www-authenticate"].startswith("ApiKey"), (status, body)
        assert json.loads(body)["detail"] in ("missing X-API-Key header", "wrong API key")
        for path in ("/docs", "/openapi.json", "/media/anything"):
            assert request(url, "GET", path, key=key)[0] == 401, path
    status, _, body = request(url, "POST", "/search", _search_body())
    assert status == 200 and len(json.loads(body)["results"]) == 5
    status, _, body = request(url, "GET", "/", key=None)
    assert status == 200 and b'id="api-key"' in body
    status, health = get_json(url + "/healthz")
    assert status == 200 and health["api_key_required"] is True
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json", "/"):
        status, _, body = request(url, "GET", path)
        assert status == 200 and KEY.encode() not in body, path
    # Nor in the app's logs (replicas and proxy).
    logs = [os.path.join(d, f) for root in _log_dirs() for d, _, files in os.walk(os.path.join(root, "serve"))
            for f in files]
    assert logs and not [f for f in logs if KEY.encode() in open(f, "rb").read()]


def _log_dirs() -> list[str]:
    """Log folders of the test clusters (the `ray_head` fixture's temp dirs are /tmp/rt*)."""
    return glob.glob("/tmp/rt*/session_latest/logs")


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
        expect(page.locator(".tile")).to_have_count(8, timeout=60_000)
        # <img> cannot send the key: the page fetches each image with it and shows a blob: URL.
        wait_for_tile_images(page, 180)  # the page backs off for about 2 min
    assert not errors, errors


def test_request_bodies_over_the_limit_get_413(guarded):
    url = guarded["url"]
    status, _, body = request(url, "POST", "/search", _search_body("x" * 17000))
    assert status == 413 and "at most 16384" in json.loads(body)["detail"]
    # Chunked, with no Content-Length: refused once the body passes the limit.
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        chunks = iter([b'{"query": "', b"y" * 9000, b"y" * 9000, b'"}'])
        conn.request("POST", "/search", body=chunks, headers={"X-API-Key": KEY, "Content-Type": "application/json"},
                     encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 413 and "over 16384 bytes" in json.loads(r.read())["detail"]
    finally:
        conn.close()
    status, _, body = request(url, "POST", "/search", _search_body("z" * 600))  # under the limit: the app's own 422
    assert status == 422 and "at most 512" in json.loads(body)["detail"]


# Fuzz: JSON of any shape, fields of the wrong types, huge and odd strings, raw bytes, odd media ids and methods.
JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=10)
HUGE = st.integers(0, 20000).map(lambda n: "\u00e9\u732b" * n)
FIELDS = {"query": st.text(max_size=600) | HUGE | JUNK, "k": st.integers(-10, 300) | JUNK,
          "rerank": st.booleans() | JUNK, "rerank_k": st.integers(-10, 300) | JUNK, "colour": JUNK}
TRICKY = [b"", b"null", b"[]", b'"a cat"', b"{not json", b'{"query": "\\ud800 cat"}', b'{"query": "a", "k": NaN}',
          b'{"query": "a", "k": 1e400}', b'{"query": "a", "k": 1.5}', b'{"query": "a\\u0000b"}', b"\xff\xfe{}",
          b'{"query": "a", "query": 3}', b"[" * 5000 + b"]" * 5000, b'{"query": {"$ne": 1}}']
BODIES = (st.fixed_dictionaries({}, optional=FIELDS).map(lambda d: json.dumps(d).encode())
          | JUNK.map(lambda j: json.dumps(j).encode()) | st.binary(max_size=300) | st.sampled_from(TRICKY))
IDS = st.text(max_size=80) | st.sampled_from(["..", "../../etc/passwd", "%2e%2e", "\x00", "a/b/../c", "x" * 3000])
CASES = (st.tuples(st.just("POST"), st.just("/search"), BODIES)
         | st.tuples(st.just("GET"), IDS.map(lambda i: "/media/" + urllib.parse.quote(i, safe="/")), st.none())
         | st.tuples(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
                     st.sampled_from(["/search", "/media/x", "/healthz", "/nope", "/search/../healthz", "/%ff"]),
                     st.none() | BODIES))
FUZZ_TIMEOUT_S = 10.0


def test_fuzz_http_api_no_5xx_and_json_4xx(guarded, fault_record):
    statuses = []

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(case=CASES, with_key=st.sampled_from([True, True, True, False]))
    def one(case, with_key):
        statuses.append(_check_answer(guarded["url"], *case, key=KEY if with_key else None))

    one()
    fault_record("input", "HTTP requests generated by hypothesis (any JSON, wrong types, huge strings, raw bytes)",
                 tried=len(statuses), refused=sum(s >= 400 for s in statuses), five_xx=0)


def _check_answer(url: str, method: str, path: str, body: bytes | None, key: str | None = KEY) -> int:
    """Send one request: it must answer in time, with no 5xx, and any 4xx as JSON with a `detail`; its status."""
    t0 = time.monotonic()
    status, headers, raw = request(url, method, path, body, key=key, timeout=FUZZ_TIMEOUT_S)
    assert time.monotonic() - t0 < FUZZ_TIMEOUT_S
    assert status < 500, (method, path, body and body[:200], status, raw[:300])
    if status >= 400:
        assert headers.get("content-type", "").startswith("application/json"), (path, status, raw[:300])
        detail = json.loads(raw)["detail"]
        assert detail and isinstance(detail, str), (path, body and body[:200], detail)
    return status


def test_tricky_bodies_get_json_4xx(guarded, fault_record):
    """The odd bodies the fuzz may miss, every time (a lone surrogate in the query was a 500)."""
    statuses = {body: _check_answer(guarded["url"], "POST", "/search", body) for body in TRICKY}
    assert statuses[b'{"query": "\\ud800 cat"}'] == 422 and statuses[b'{"query": "a\\u0000b"}'] == 200
    fault_record("input", "HTTP bodies that broke APIs before (lone surrogate, NaN, 1e400, deep nesting, ...)",
                 tried=len(statuses), refused=sum(s >= 400 for s in statuses.values()), five_xx=0)


def test_backpressure_is_503_with_retry_after(guarded, fault_record):
    """Past the ingress's max_ongoing_requests (4) + max_queued_requests (4), Serve answers 503 + Retry-After."""
    refused = _check_backpressure(guarded["url"])
    fault_record("input", "40 slow requests at once at Serve's proxy", tried=40, refused=refused, five_xx=0)


def _check_backpressure(url: str, n: int = 40) -> int:
    """`n` slow requests at once at `url`: each a 200 or a 503 with Retry-After, none lost or hung; then a 200.
    How many were refused."""
    results, start = [], threading.Barrier(n)
    body = _search_body(k=50, rerank=True, rerank_k=100)

    def one():
        start.wait(timeout=30)
        try:
            results.append(request(url, "POST", "/search", body, timeout=30))
        except Exception as e:  # noqa: BLE001 - a hang or a dropped connection is what this test looks for
            results.append((0, {}, repr(e).encode()))

    t0 = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert time.monotonic() - t0 < 60 and len(results) == n
    statuses = sorted(r[0] for r in results)
    assert set(statuses) <= {200, 503}, statuses
    refused = [r for r in results if r[0] == 503]
    assert refused and statuses.count(200) >= 2, statuses
    for _, headers, raw in refused:
        assert headers.get("retry-after") == "1" and b"backpressure" in raw, (headers, raw[:200])
    print(f"backpressure at {url}: {len(refused)} of {n} refused: 503 {refused[0][1]} {refused[0][2][:200]!r}")
    # And it recovers at once.
    assert request(url, "POST", "/search", _search_body())[0] == 200
    return len(refused)


def _replica_urls(ray_head) -> list[str]:
    """The ingress replicas' own HTTP addresses (direct ingress), asked of the cluster from a separate driver."""
    code = ("import json, ray; from serve_app.deploy import ingress_replica_urls; "
            f"ray.init(address={ray_head.gcs!r}, log_to_driver=False); print(json.dumps(ingress_replica_urls()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_direct_ingress_port_has_the_same_key_and_backpressure(guarded, ray_head, fault_record):
    """A load balancer may target the replica's own port (no proxy): the key and the limits hold there too."""
    (url,) = _replica_urls(ray_head)
    assert url != guarded["url"]
    for key in (None, KEY[:-1]):
        status, headers, raw = request(url, "POST", "/search", _search_body(), key=key)
        assert status == 401 and "x-api-key" in headers.get("www-authenticate", "").lower(), (status, raw[:200])
    assert request(url, "GET", "/healthz", key=None)[0] == 200
    status, _, raw = request(url, "POST", "/search", _search_body())
    assert status == 200 and json.loads(raw)["index_version"] == guarded["v1"]
    assert request(url, "POST", "/search", _search_body("x" * 17000))[0] == 413
    refused = _check_backpressure(url)
    fault_record("input", "40 slow requests at once at the ingress replica's own port", tried=40, refused=refused,
                 five_xx=0)


def _kill_replicas(dashboard: str, deployment: str) -> list[int]:
    """SIGKILL the live replica processes of `deployment` (a crash, not a graceful stop); their pids."""
    from ray.util.state import list_actors

    actors = [a for a in list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=1000)
              if a.class_name == f"ServeReplica:fastslow:{deployment}"]
    for a in actors:
        os.kill(a.pid, signal.SIGKILL)
    return [a.pid for a in actors]


def _stream_through_kill(guarded: dict, body: bytes, dashboard: str, deployment: str, hurt, healed, fault_record,
                         timeout_s: float = 150.0) -> list[dict]:
    """Query in a loop while `deployment`'s replicas are killed, until an answer after a `hurt` one is `healed`;
    every answer must be a 200, of the live version, with only that version's ids. The answers after the kill."""
    url = guarded["url"]
    answers, failures, stop = [], [], threading.Event()

    def stream():
        while not stop.is_set():
            try:
                status, _, raw = request(url, "POST", "/search", body, timeout=30)
                (answers.append((time.monotonic(), json.loads(raw))) if status == 200
                 else failures.append((status, raw[:300])))
            except Exception as e:  # noqa: BLE001 - a lost request is what this test looks for
                failures.append(repr(e))

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        time.sleep(1.0)
        killed_at = time.monotonic()
        killed = _kill_replicas(dashboard, deployment)
        assert killed, f"no live {deployment} replica"
        # A replica that was still starting (the autoscaler may be adding one) escapes the kill and answers:
        # kill again until an answer shows the fault, a few rounds at most.
        hurt_seen = lambda: any(hurt(a) for t, a in list(answers) if t > killed_at)  # noqa: E731
        for _ in range(5):
            round_end = time.monotonic() + 5
            while time.monotonic() < round_end and not hurt_seen():
                time.sleep(0.2)
            if hurt_seen():
                break
            killed += _kill_replicas(dashboard, deployment)
        deadline, after = killed_at + timeout_s, []
        while time.monotonic() < deadline:
            after = [a for t, a in list(answers) if t > killed_at]
            first_hurt = next((i for i, a in enumerate(after) if hurt(a)), None)
            if first_hurt is not None and any(healed(a) for a in after[first_hurt + 1:]):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"{deployment} did not come back in {timeout_s:.0f} s: {after[-1:]}")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failures, failures[:3]
    live = set(load_version(guarded["root"], guarded["v1"]).metadata.column("id").to_pylist())
    foreign = [h["id"] for _, a in answers for h in a["results"]
               if a["index_version"] != guarded["v1"] or h["id"] not in live]
    assert not foreign, foreign[:5]
    fault_record("fault", f"every {deployment} replica SIGKILLed under a stream of queries", injected=len(killed),
                 queries=len(answers), failed_queries=len(failures), hurt_answers=sum(map(hurt, after)),
                 foreign_ids=len(foreign))
    return after


def test_every_reranker_replica_killed_degrades_then_recovers(guarded, ray_head, fault_record):
    body = _search_body(k=6, rerank=True, rerank_k=12)
    after = _stream_through_kill(guarded, body, ray_head, "SlowReranker", hurt=lambda a: a["degraded"],
                                 healed=lambda a: a["reranked"] and not a["degraded"], fault_record=fault_record)
    _, fast = request(guarded["url"], "POST", "/search", _search_body(k=6, rerank=False))[::2]
    fast_ids = [h["id"] for h in json.loads(fast)["results"]]
    for a in after:  # while it is down: the Fast order, said so
        assert a["reranked"] or ([h["id"] for h in a["results"]] == fast_ids and a["degraded_reason"]), a
    wait_ready(guarded["url"], timeout=60)


def test_a_shard_replica_killed_gives_partial_answers_then_recovers(guarded, ray_head, fault_record):
    body = _search_body(k=6, rerank=False)
    after = _stream_through_kill(guarded, body, ray_head, "ShardRetriever1", hurt=lambda a: a["partial"],
                                 healed=lambda a: not a["partial"], fault_record=fault_record)
    for a in after:
        assert a["shards"]["answered"] == ([0] if a["partial"] else [0, 1]) and len(a["results"]) == 6, a
        assert not a["partial"] or "shard 1" in a["shards"]["failed"]["1"], a
    wait_ready(guarded["url"], timeout=60)
