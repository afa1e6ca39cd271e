"""The search app's guard middleware alone, in process (no Ray): the API key and the request-body limit. The
deployed app behind it: tests/test_serve_hardening.py."""

import asyncio
import json

import pytest
from serve_helpers import KEY

from serve_app.guard import Guard, GuardSettings

pytestmark = pytest.mark.faults


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
