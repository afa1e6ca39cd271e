"""A small client of the search endpoint: `fastslow search` and scripts that query the app."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request

from fastslow.errors import FastslowError
from fastslow.search.request import IMAGE_WEIGHT, SearchRequest


def read_image(path: str | None) -> bytes | None:
    """The bytes of the image file `path` (None for None), or a FastslowError naming it."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise FastslowError(f"--image {path}: cannot be read ({e.strerror or e})") from None


def read_filter(text: str | None) -> dict | None:
    """A filter given as JSON text (None for None), or a FastslowError saying what is wrong with it."""
    if text is None:
        return None
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise FastslowError(f"--filter: not JSON ({e})") from None
    if not isinstance(spec, dict):
        raise FastslowError('--filter: must be a JSON object, e.g. {"width": {"gte": 512}}')
    return spec


def search(url: str, query: str = "", k: int = SearchRequest.k, rerank: bool = SearchRequest.rerank,
           rerank_k: int = SearchRequest.rerank_k, timeout: float = 30.0, api_key: str | None = None,
           image: bytes | None = None, like: str | None = None, image_weight: float = IMAGE_WEIGHT,
           filter_spec: dict | None = None) -> dict:
    """POST URL/search: words, an image file's bytes or an indexed item's id (`like`), or words with either, over
    the items passing `filter_spec`; the answer, or a FastslowError with the server's own reason."""
    fields = {"query": query, "k": k, "rerank": rerank, "rerank_k": rerank_k, "image_weight": image_weight,
              "image": None if image is None else base64.b64encode(image).decode("ascii"), "like": like,
              "filter": filter_spec}
    body = json.dumps({name: v for name, v in fields.items() if v is not None}).encode()
    headers = {"Content-Type": "application/json", **({"X-API-Key": api_key} if api_key else {})}
    request = urllib.request.Request(url.rstrip("/") + "/search", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("detail")
        except ValueError:
            detail = None
        raise FastslowError(f"{url}: {e.code} {detail or e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FastslowError(f"{url}: no answer ({reason}); is the app running? (`fastslow serve` or `fastslow demo`)") \
            from None


def format_answer(answer: dict) -> str:
    """The answer as a text table, with how it was ranked and where the time went."""
    lines = [f"{'#':>3}  {'fast':>7}  {'slow':>8}  {'id':<16} caption"]
    for hit in answer["results"]:
        slow = "-" if hit.get("slow_score") is None else f"{hit['slow_score']:.2f}"
        lines.append(f"{hit['rank']:>3}  {hit['fast_score']:>7.3f}  {slow:>8}  {str(hit['id'])[:16]:<16} "
                     f"{hit.get('caption') or hit.get('location', '')}")
    order = "re-ranked by Slow" if answer.get("reranked") else "Fast order"
    if answer.get("query_by") not in (None, "text"):
        order = f"query by {answer['query_by']}" + (f" {answer['like']!r}" if answer.get("like") else "") + "; " + order
    if answer.get("degraded"):
        order += f" (degraded: {answer.get('degraded_reason')})"
    if answer.get("partial"):
        order += f" (partial: shards {sorted(answer['shards']['failed'])} did not answer)"
    timings = ", ".join(f"{name} {ms:.1f}" for name, ms in (answer.get("timings_ms") or {}).items())
    lines.append(f"{order}; index version {answer.get('index_version')}; ms: {timings}")
    return "\n".join(lines)
