"""The HTTP ingress (FastAPI on Serve) and `build_app`, the application the Serve YAML imports.

    GET  /         the search page (serve_app/static/search.html: plain HTML and JS, same origin only)
    POST /search   {"query": ..., "k": 10, "rerank": true, "rerank_k": 20}; or "image" (base64) or "like" (an id)
                   instead of or beside "query", and "filter" (fastslow/search/filters.py)
    GET  /filters  the fields a filter may name in the live version, with their operators and values
    GET  /media/<id>  an item's image (a video's middle frame, as JPEG): the id percent-encoded as one path
                   segment (JS encodeURIComponent); a '/' in an id may also be sent as is
    GET  /healthz  the process answers (and the limits and live index version)
    GET  /readyz   200 only when every shard and the re-ranker answer
    GET  /docs     OpenAPI

Metrics (request outcomes, stage latencies, the re-ranker's queue) go to Ray's metrics agent: serve_app/metrics.py.

With an API key (the app's `api_key_env` names the replicas' environment variable holding it), every route
but /, /healthz and /readyz needs header `X-API-Key` (401 otherwise); bodies over `max_body_bytes` plus room for an
image's base64 (`limits.max_image_bytes`) get a 413 (serve_app/guard.py). Past the ingress's max_ongoing_requests +
max_queued_requests, Serve itself answers 503 with `Retry-After` (the YAML's `backpressure_config`).

One request: encode (here, or in the encoder deployment), every shard in parallel, merge, Slow
re-scores the top rerank_k. The re-ranker failing, timing out or being overloaded degrades the
answer to the Fast order (`degraded`, `degraded_reason`); a shard failing leaves it out (`partial`).

/media serves only items of the live index version, found by id through the shards (never a path from
the request), and only from inside the collection root the version recorded (serve_app/media.py);
anything else is a 404.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' types at run time.

import asyncio
import base64
import binascii
import importlib.resources

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster.resources import actor_options, gpus_per_actor
from fastslow.data.decode import DecodeConfig, decode_image
from fastslow.errors import DecodeError, FastslowError, user_error
from fastslow.index.publish import current_version, read_manifest
from fastslow.log import get_logger
from fastslow.models.checkpoint import read_manifest as read_checkpoint
from fastslow.search.encoder import QueryEncoder
from fastslow.search.shard import index_num_frames
from fastslow.search.filters import FilterError, check_filter, merge_descriptions
from fastslow.search.pipeline import (NO_RERANKER, NoShardAnswered, QueryStages, SearchRequest, UnknownItem,
                                      answer_query)
from serve_app.api import ErrorAnswer, FiltersAnswer, SearchAnswer, SearchBody
from serve_app.config import ServeAppConfig, app_config, body_limit
from serve_app.deployments import QueryEncoderDeployment, ShardRetriever, SlowReranker
from serve_app import guard, metrics
from serve_app.media import MediaReader, MediaRefused

log = get_logger("fastslow.serve")

PAGE = importlib.resources.files("serve_app").joinpath("static/search.html").read_text(encoding="utf-8")
# The page may load nothing but itself and this app: no CDN, no third-party requests.
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
                                           "script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'"}
MEDIA_HEADERS = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
NOT_CACHED = {"Cache-Control": "no-store"}
MAX_ID_CHARS = 1024
MEDIA_READS = 4  # media reads at once per ingress replica (each in a thread): thumbnails never starve /search

app = FastAPI(title="fastslow search", version="1",
              description="Language search over an image and video collection: Fast retrieves, Slow re-ranks.")
app.add_middleware(guard.Guard)
app.add_middleware(metrics.CountRefusals)  # added last, so outermost: it sees the guard's 401s and 413s too


@app.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line per problem, e.g. `k: Input should be a valid integer`."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return JSONResponse(status_code=422, content={"detail": "; ".join(problems) or "invalid request body"})


async def _within(response, timeout_s: float):
    """Await a deployment response for at most `timeout_s` (cancelling it past that)."""
    try:
        return await asyncio.wait_for(_awaited(response), timeout_s)
    except asyncio.TimeoutError:
        response.cancel()
        raise


async def _awaited(response):
    return await response


def _reason(e: BaseException, what: str, timeout_s: float) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return f"{what} timed out after {timeout_s:g} s"
    if type(e).__name__ == "BackPressureError":
        return f"{what} overloaded (its queue is full)"
    first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return f"{what} failed: {first[:200]}"


# Queue bounds, backpressure and user_config (the live index version) are set in the Serve config YAML's
# `deployments:` only (configs/serve_synth.yaml), the one way the app is deployed.
@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Ingress:
    def __init__(self, cfg: ServeAppConfig, retrievers: list[DeploymentHandle], reranker: DeploymentHandle | None,
                 encoder: DeploymentHandle | None):
        self.cfg, self.retrievers, self.reranker, self.encoder = cfg, retrievers, reranker, encoder
        # Through the module, never a name imported from it: Serve pickles this class by value, and a global
        # object it names would arrive as a copy, not the one the middleware reads.
        guard.SETTINGS.configure(cfg.api_key_env, body_limit(cfg))
        if guard.SETTINGS.key is None:
            log.warning("no API key: $%s is not set; every route is open (local use only)", cfg.api_key_env)
        self.local_encoder = QueryEncoder(cfg.fast_checkpoint, threads=cfg.torch_threads) if encoder is None else None
        # An image given as the query is decoded as the index decoded its items.
        self.decode = DecodeConfig.for_model(read_checkpoint(cfg.fast_checkpoint)["config"]["vision"])
        self.fields: dict[str, dict] = {}  # the live version's filterable fields (GET /filters), set with it
        self.version: str | None = None
        self.metric = "ip"  # the live version's, set with it: how the shards' scores merge
        self.collection_root: str | None = None  # the live version's: /media serves files under it only
        self.media = MediaReader()
        self.media_slots = asyncio.Semaphore(MEDIA_READS)

    async def reconfigure(self, user_config: dict) -> None:
        """Swap index versions: every shard loads the new one (still answering with the old), then it goes live.

        `index_version: ""` means the version CURRENT names now.
        """
        wanted = (user_config or {}).get("index_version") or current_version(self.cfg.index_root)
        if wanted == self.version:
            return
        manifest = read_manifest(self.cfg.index_root, wanted)  # refuse an incomplete version before any shard loads
        await asyncio.gather(*[h.load.remote(wanted) for h in self.retrievers])
        described = await asyncio.gather(*[h.fields.remote(wanted) for h in self.retrievers])
        log.info("index version %s is live (was %s)", wanted, self.version)
        self.version, self.metric, self.fields = wanted, manifest["metric"], merge_descriptions(described)
        self.collection_root = (manifest.get("model") or {}).get("collection_root")

    def _check(self, body: SearchBody) -> SearchRequest:
        """The request `body` asks for, or a 4xx naming the field that is wrong."""
        lim, query = self.cfg.limits, body.query.strip()
        if not query.isprintable() and any(0xD800 <= ord(c) <= 0xDFFF for c in query):
            # A lone surrogate (JSON "\ud800") cannot be encoded as UTF-8: neither tokenised nor echoed back.
            raise HTTPException(422, "query: is not valid Unicode (a lone surrogate)")
        if len(body.query) > lim.max_query_chars:
            raise HTTPException(422, f"query: {len(body.query)} characters, at most {lim.max_query_chars}")
        if body.image is not None and body.like is not None:
            raise HTTPException(422, "image, like: give one of them, not both")
        if not query and body.image is None and body.like is None:
            raise HTTPException(422, "query: is empty (give words, an image or like, or words with either)")
        if not 1 <= body.k <= lim.max_k:
            raise HTTPException(422, f"k: {body.k} is out of range (1 to {lim.max_k})")
        if not 1 <= body.rerank_k <= lim.max_rerank_k:
            raise HTTPException(422, f"rerank_k: {body.rerank_k} is out of range (1 to {lim.max_rerank_k})")
        if body.like is not None and not 0 < len(body.like) <= MAX_ID_CHARS:
            raise HTTPException(422, f"like: an id of 1 to {MAX_ID_CHARS} characters")
        if body.like is not None and any(0xD800 <= ord(c) <= 0xDFFF for c in body.like):
            raise HTTPException(422, "like: is not valid Unicode (a lone surrogate)")
        try:
            checked = check_filter(body.filter, {name: f["kind"] for name, f in self.fields.items()})
        except FilterError as e:
            raise HTTPException(422, str(e)) from None
        return SearchRequest(query, body.k, body.rerank, body.rerank_k, None, body.like, body.image_weight,
                             checked or None, body.explain)

    def _image(self, encoded: str) -> np.ndarray:
        """The uploaded image decoded as the index's items were, or a 413/422 naming `image`."""
        limit = self.cfg.limits.max_image_bytes
        if not limit:
            raise HTTPException(422, "image: this app takes no image queries (limits.max_image_bytes is 0)")
        if len(encoded) > 4 * -(-limit // 3) + 4:
            raise HTTPException(413, f"image: over {limit} bytes")
        try:
            data = base64.b64decode(encoded.split(",", 1)[-1] if encoded.startswith("data:") else encoded,
                                    validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(422, "image: is not base64 (the image file's bytes, base64-encoded)") from None
        if len(data) > limit:
            raise HTTPException(413, f"image: {len(data)} bytes, at most {limit}")
        try:
            return decode_image(data, self.decode.image_size, self.decode.fit)
        except DecodeError as e:
            raise HTTPException(422, f"image: {e}") from None

    async def _encode(self, query: str) -> np.ndarray:
        if self.local_encoder is not None:
            return self.local_encoder.encode([query])[0]
        try:
            return await _within(self.encoder.encode.remote(query), self.cfg.retrieve_timeout_s)
        except Exception as e:  # noqa: BLE001 - without a query vector there is nothing to search with
            raise HTTPException(503, _reason(e, "the query encoder", self.cfg.retrieve_timeout_s)) from None

    async def _encode_image(self, pixels: np.ndarray) -> np.ndarray:
        if self.local_encoder is not None:
            return await asyncio.to_thread(lambda: self.local_encoder.encode_images(pixels[None])[0])
        try:
            return await _within(self.encoder.encode_image.remote(pixels), self.cfg.retrieve_timeout_s)
        except Exception as e:  # noqa: BLE001 - without a query vector there is nothing to search with
            raise HTTPException(503, _reason(e, "the query encoder", self.cfg.retrieve_timeout_s)) from None

    async def _item_vector(self, item_id: str, version: str) -> np.ndarray | None:
        """The vector of `item_id` from the shard holding it; None when no shard does (503 if one did not answer)."""
        answers, failed = await self._each_shard(lambda h: h.vector.remote(item_id, version))
        found = [a for a in answers if a is not None]
        if found:
            return found[0]
        if failed:
            raise HTTPException(503, "; ".join(failed.values()), headers=NOT_CACHED)
        return None

    async def _each_shard(self, call) -> tuple[list, dict[str, str]]:
        """`call(handle)` on every shard at once, each within the retrieve timeout: (the answers of those that
        answered, in shard order; shard -> why each other one did not)."""
        timeout = self.cfg.retrieve_timeout_s
        answers = await asyncio.gather(*[_within(call(h), timeout) for h in self.retrievers], return_exceptions=True)
        failed = {str(s): _reason(a, f"shard {s}", timeout) for s, a in enumerate(answers)
                  if isinstance(a, BaseException)}
        return [a for a in answers if not isinstance(a, BaseException)], failed

    async def _retrieve(self, vector: np.ndarray, depth: int, version: str,
                        filter_spec: dict | None) -> tuple[list[list[dict]], dict]:
        return await self._each_shard(lambda h: h.search.remote(vector, depth, version, filter_spec))

    async def _rerank(self, query: str, head: list[dict]) -> tuple[list[float | None] | None, str | None]:
        if self.reranker is None:
            return None, NO_RERANKER
        timeout = self.cfg.rerank_timeout_s
        try:
            return await _within(self.reranker.score.remote(query, head), timeout), None
        except Exception as e:  # noqa: BLE001 - any failure of the re-ranker degrades, never fails, the answer
            return None, _reason(e, "re-ranker", timeout)

    async def _explain(self, query: str, hits: list[dict]) -> tuple[list[dict | None] | None, str | None]:
        if self.reranker is None:
            return None, NO_RERANKER
        timeout = self.cfg.rerank_timeout_s
        try:
            return await _within(self.reranker.explain.remote(query, hits), timeout), None
        except Exception as e:  # noqa: BLE001 - an answer without maps, saying why, rather than no answer
            found = user_error(e)
            return None, str(found) if found else _reason(e, "re-ranker", timeout)

    @app.post("/search", response_model=SearchAnswer, responses={
        404: {"model": ErrorAnswer, "description": "`like` names no item of the live version"},
        413: {"model": ErrorAnswer, "description": "the body, or the image in it, is over the limit"},
        422: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}})
    async def search(self, body: SearchBody) -> JSONResponse:
        """Words, an image (base64) or an indexed item (`like`), or words with either, over the items passing
        `filter`; re-ranked by Slow where there are words."""
        req = self._check(body)
        if body.image is not None:  # decoded off the event loop: a large JPEG takes tens of milliseconds
            req.image = await asyncio.to_thread(self._image, body.image)
        version = self.version
        stages = QueryStages(self._encode, lambda vector, depth, spec: self._retrieve(vector, depth, version, spec),
                             self._rerank, len(self.retrievers), self.metric, self.cfg.fast_weight, self._encode_image,
                             lambda item_id: self._item_vector(item_id, version), self._explain)
        try:
            answer = await answer_query(stages, req, version)
        except NoShardAnswered as e:
            raise HTTPException(503, str(e)) from None
        except UnknownItem as e:
            raise HTTPException(404, str(e)) from None
        metrics.METRICS.answered(answer)
        # A Response object is sent as is: `response_model` documents the shape (/docs) without re-validating
        # every answer (a millisecond per request here).
        return JSONResponse(answer)

    @app.get("/filters", response_model=FiltersAnswer)
    async def filters(self) -> dict:
        """The fields a `filter` may name in the live index version: their kind, operators, values or range."""
        return {"index_version": self.version, "fields": self.fields}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    async def _lookup(self, item_id: str, version: str) -> dict | None:
        """The item's {id, uri, media} from the shard holding it in `version`; None when no shard does."""
        answers, failed = await self._each_shard(lambda h: h.lookup.remote(item_id, version))
        found = [a for a in answers if isinstance(a, dict)]
        if found:
            return found[0]
        if failed:  # the item may be in a shard that did not answer
            raise HTTPException(503, "; ".join(failed.values()), headers=NOT_CACHED)
        return None

    @app.get("/media/{item_id:path}", responses={200: {"content": {"image/jpeg": {}, "image/png": {}}},
                                                 404: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}})
    async def media(self, item_id: str) -> Response:
        """The item's image as stored (PNG when browsers cannot show its format); a video's middle frame as JPEG."""
        version, root = self.version, self.collection_root
        shown = repr(item_id[:200])
        item = await self._lookup(item_id, version) if 0 < len(item_id) <= MAX_ID_CHARS else None
        if item is None:
            raise HTTPException(404, f"no item {shown} in index version {version}", headers=NOT_CACHED)
        try:
            async with self.media_slots:
                data, content_type = await asyncio.to_thread(self.media.get, item, root)
        except MediaRefused as e:
            log.warning("media of %s refused: %s", shown, e)
            raise HTTPException(404, f"item {shown}: media not served ({e})", headers=NOT_CACHED) from None
        return Response(data, media_type=content_type, headers=MEDIA_HEADERS)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"ok": True, "index_version": self.version, "shards": len(self.retrievers),
                "reranker": self.reranker is not None, "limits": vars(self.cfg.limits),
                "api_key_required": guard.SETTINGS.key is not None, "max_body_bytes": guard.SETTINGS.max_body_bytes}

    @app.get("/readyz", responses={503: {"description": "some part does not answer"}})
    async def readyz(self) -> JSONResponse:
        timeout = self.cfg.retrieve_timeout_s
        checks = {f"shard {s}": _within(h.ready.remote(self.version), timeout) for s, h in enumerate(self.retrievers)}
        if self.reranker is not None:
            checks["reranker"] = _within(self.reranker.ready.remote(), self.cfg.rerank_timeout_s)
        results = await asyncio.gather(*checks.values(), return_exceptions=True)
        status = {name: (r is True) for name, r in zip(checks, results)}
        ready = self.version is not None and all(status.values())
        return JSONResponse(status_code=200 if ready else 503,
                            content={"ready": ready, "index_version": self.version, "parts": status})


def build_app(args: dict) -> serve.Application:
    """The application for `serve run` / `serve deploy` (import path `serve_app.ingress:build_app`)."""
    cfg = app_config(args)
    version = current_version(cfg.index_root)
    manifest = read_manifest(cfg.index_root, version)
    shards = len(manifest["shards"])
    if cfg.shards and cfg.shards != shards:
        raise FastslowError(f"serve: shards is {cfg.shards} but index version {version} has {shards}")
    fast = read_checkpoint(cfg.fast_checkpoint)
    model_sha = fast["weights_sha256"]
    if (manifest.get("model") or {}).get("weights_sha256") != model_sha:
        raise FastslowError(f"serve: index version {version} was not built with {cfg.fast_checkpoint}")
    # Where each part runs: the re-ranker on a GPU where the cluster has one, the shards on CPU nodes.
    # (A `ray_actor_options` in the YAML's deployments list still wins.)
    retrievers = [ShardRetriever.options(name=f"ShardRetriever{s}", ray_actor_options=actor_options(0.25, 0)).bind(
        cfg, s, version, int(manifest["dim"]), model_sha) for s in range(shards)]
    rerank_options = actor_options(0.5, gpus_per_actor(cfg.reranker_gpus))
    reranker = (SlowReranker.options(ray_actor_options=rerank_options).bind(cfg, index_num_frames(manifest))
                if cfg.slow_checkpoint else None)
    encoder = None if cfg.encoder_in_ingress else QueryEncoderDeployment.bind(cfg)
    return Ingress.bind(cfg, retrievers, reranker, encoder)
