"""ASGI middleware in front of the ingress's routes: the optional API key and the request-body size limit.

The key is read from an environment variable of the replica (the app's `api_key_env`, set through the
Serve config's `runtime_env.env_vars`, never its `args`, which `serve status` shows); unset or empty = no key
(the local demo). With a key, every route but the open ones needs header `X-API-Key`.
"""

from __future__ import annotations

import hmac
import json
import os

from starlette.exceptions import HTTPException

OPEN_PATHS = frozenset({"/", "/healthz", "/readyz"})  # the page (it asks for the key) and the health probes
KEY_HEADER = b"x-api-key"


class GuardSettings:
    """What the guard enforces; set by the ingress replica when it starts (one app per replica process)."""

    def __init__(self) -> None:
        self.key: bytes | None = None
        self.max_body_bytes = 16 * 1024

    def configure(self, key_env: str, max_body_bytes: int) -> None:
        key = os.environ.get(key_env, "") if key_env else ""
        self.key = key.encode() if key else None
        self.max_body_bytes = max_body_bytes


SETTINGS = GuardSettings()


def _json_response(status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[dict, dict]:
    body = json.dumps({"detail": detail}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"cache-control", b"no-store"), *headers]}
    return start, {"type": "http.response.body", "body": body}


class _TooLarge(HTTPException):
    """Raised from `receive`: FastAPI passes HTTPExceptions from body reading through, as a JSON 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes")


class Guard:
    """Refuses requests without the API key (401) and bodies over the size limit (413), before any route runs."""

    def __init__(self, app, settings: GuardSettings = SETTINGS):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        refusal = self._refusal(scope, headers)
        if refusal:
            for message in refusal:
                await send(message)
            return
        limit, seen, started = self.settings.max_body_bytes, 0, False

        async def counted_receive():
            # A chunked body has no Content-Length: count what arrives and stop past the limit.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge as e:
            if started:
                raise
            for message in _json_response(413, e.detail):
                await send(message)

    def _refusal(self, scope, headers: dict) -> tuple[dict, dict] | None:
        key = self.settings.key
        if key is not None and scope.get("path", "") not in OPEN_PATHS:
            given = headers.get(KEY_HEADER, b"")
            if not given or not hmac.compare_digest(given, key):
                why = "missing X-API-Key header" if not given else "wrong API key"
                return _json_response(401, why, [(b"www-authenticate", b'ApiKey header="X-API-Key"')])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return _json_response(400, "Content-Length is not a number")
            if size > self.settings.max_body_bytes:
                return _json_response(413, f"request body of {size} bytes, at most {self.settings.max_body_bytes}")
        return None
