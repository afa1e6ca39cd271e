"""A small client of the search endpoint: `fastslow search` and scripts that query the app."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from fastslow.errors import FastslowError
from fastslow.search.request import SearchRequest


def search(url: str, query: str, k: int = SearchRequest.k, rerank: bool = SearchRequest.rerank,
           rerank_k: int = SearchRequest.rerank_k, timeout: float = 30.0,
           api_key: str | None = None) -> dict:
    """POST URL/search; the answer, or a FastslowError with the server's own reason."""
    body = json.dumps({"query": query, "k": k, "rerank": rerank, "rerank_k": rerank_k}).encode()
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
    if answer.get("degraded"):
        order += f" (degraded: {answer.get('degraded_reason')})"
    if answer.get("partial"):
        order += f" (partial: shards {sorted(answer['shards']['failed'])} did not answer)"
    timings = ", ".join(f"{name} {ms:.1f}" for name, ms in (answer.get("timings_ms") or {}).items())
    lines.append(f"{order}; index version {answer.get('index_version')}; ms: {timings}")
    return "\n".join(lines)
