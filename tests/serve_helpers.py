"""Helpers of the Serve tests (not a test module): the queries, HTTP clients, the API key, and the checks the
app's tests and its hardening tests share. The deployed apps themselves are conftest's `app` and `guarded`."""

from __future__ import annotations

import glob
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from helpers import REPO

QUERIES = ["a red circle above a blue square", "a small green star", "a large white triangle left of a cross"]
KEY = "fs-" + uuid.uuid4().hex  # the guarded app's API key; unique: searched for in every body and log


# conftest's `app` and `guarded`: the Serve app is deployed once for every test in a row that uses the same fixture,
# and shut down (`serve shutdown`) once the next test does not use it (conftest's pytest_runtest_teardown): Serve
# holds CPUs that Ray jobs would wait for.
SERVING = {"name": None, "head": None}


def serve_shutdown() -> None:
    """What `serve shutdown -y` does (the dashboard's DELETE of every application), without its process start."""
    if SERVING["name"] is not None:
        request = urllib.request.Request(f"{SERVING['head']}/api/serve/applications/", method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=120).close()
        except OSError:  # no Serve there, or the head is gone: nothing left to shut down
            pass
        SERVING["name"] = None


def serve(name: str, config: dict, ray_head, version: str) -> str:
    """Deploy `config` as the fixture `name`'s app unless it is the one up already; its URL once ready."""
    from serve_app.launch import deploy, wait_ready

    url = f"http://127.0.0.1:{config['http_options']['port']}"
    if SERVING["name"] != name:
        serve_shutdown()
        SERVING.update(name=name, head=ray_head)
        try:
            deploy(config, ray_head)
            wait_ready(url, timeout=400, version=version)
        except BaseException:
            serve_shutdown()
            raise
    return url


def serve_config(stack: dict, **settings) -> dict:
    """The repository's Serve YAML with `stack`'s index and checkpoints, a free port, and `settings`."""
    from cluster.connect import free_port
    from serve_app.launch import load_serve_config, with_settings

    return with_settings(
        load_serve_config(os.path.join(REPO, "configs", "serve_synth.yaml")),
        args={"index_root": stack["root"], "fast_checkpoint": stack["fast"], "slow_checkpoint": stack["slow"]},
        port=free_port(), **settings)


def odd_media(images, outside) -> tuple[str, str]:
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


def widen(images, count: int) -> list[str]:
    """Save the last `count` test images again twice as wide (a width a filter can single out); their ids."""
    from PIL import Image

    dataset = next(images.glob("dataset_*.json"))
    entries = [e for e in json.loads(dataset.read_text())["images"] if e["split"] == "test" and not e.get("filepath")]
    widened = []
    for e in entries[-count:]:
        path = images / e["filename"]
        with Image.open(path) as img:
            img.load()
            img.resize((2 * img.width, img.height)).save(path)
        widened.append(os.path.splitext(e["filename"])[0])
    return widened


def post(url: str, body, timeout: float = 60.0) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/search", data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def ids(answer: dict) -> list[str]:
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


def search_body(query: str = QUERIES[0], **more) -> bytes:
    return json.dumps({"query": query, "k": 5, **more}).encode()


def log_dirs() -> list[str]:
    """Log folders of the test clusters (the `ray_head` fixture's temp dirs are /tmp/rt*)."""
    return glob.glob("/tmp/rt*/session_latest/logs")


FUZZ_TIMEOUT_S = 10.0



def check_answer(url: str, method: str, path: str, body: bytes | None, key: str | None = KEY) -> int:
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


def check_backpressure(url: str, n: int = 40) -> int:
    """`n` slow requests at once at `url`: each a 200 or a 503 with Retry-After, none lost or hung; then a 200.
    How many were refused."""
    results, start = [], threading.Barrier(n)
    body = search_body(k=50, rerank=True, rerank_k=100)

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
    assert request(url, "POST", "/search", search_body())[0] == 200
    return len(refused)


def replica_urls(ray_head) -> list[str]:
    """The ingress replicas' own HTTP addresses (direct ingress), asked of the cluster from a separate driver."""
    code = ("import json, ray; from serve_app.launch import ingress_replica_urls; "
            f"ray.init(address={ray_head.gcs!r}, log_to_driver=False); print(json.dumps(ingress_replica_urls()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def kill_replicas(dashboard: str, deployment: str) -> list[int]:
    """SIGKILL the live replica processes of `deployment` (a crash, not a graceful stop); their pids."""
    from ray.util.state import list_actors

    actors = [a for a in list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=1000)
              if a.class_name == f"ServeReplica:fastslow:{deployment}"]
    for a in actors:
        os.kill(a.pid, signal.SIGKILL)
    return [a.pid for a in actors]


def stream_through_kill(guarded: dict, body: bytes, dashboard: str, deployment: str, hurt, healed, fault_record,
                        timeout_s: float = 150.0) -> list[dict]:
    """Query in a loop while `deployment`'s replicas are killed, until an answer after a `hurt` one is `healed`;
    every answer must be a 200, of the live version, with only that version's ids. The answers after the kill."""
    from fastslow.index.publish import load_version

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
        killed = kill_replicas(dashboard, deployment)
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
            killed += kill_replicas(dashboard, deployment)
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
