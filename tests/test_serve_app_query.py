"""Query by image, `like` an indexed item, words with either, and filters: over HTTP on the app of conftest's `app`
(the tiny images, v1: all 70 items, 5 test images twice as wide as the others), and through `fastslow search`."""

import base64
import json
import os

import numpy as np
import pytest
from helpers import fastslow_cli
from serve_helpers import QUERIES, ids, post

from fastslow.index.publish import load_version
from serve_app.launch import get_json


def _items(app) -> list[dict]:
    """v1's items: {id, uri, width}."""
    table = load_version(app["root"], app["v1"]).metadata
    return [{"id": i, "uri": u, "width": w} for i, u, w in zip(*(table.column(c).to_pylist()
                                                                  for c in ("id", "uri", "width")))]


def _b64(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def _first_within_ties(answer: dict, item_id: str) -> bool:
    """`item_id` is among the results that share the best score."""
    top = answer["results"][0]["fast_score"]
    return item_id in [h["id"] for h in answer["results"] if h["fast_score"] >= top - 1e-5]


def test_an_items_own_image_and_like_find_the_item_first(app):
    items = [i for i in _items(app) if i["id"] != app["symlink_id"]]
    for item in items[::9]:
        status, by_image = post(app["url"], {"image": _b64(item["uri"]), "k": 5})
        assert status == 200, by_image
        assert by_image["query_by"] == "image" and not by_image["reranked"] and not by_image["degraded"]
        assert _first_within_ties(by_image, item["id"]), (item["id"], ids(by_image))
        assert by_image["results"][0]["fast_score"] == pytest.approx(1.0, abs=1e-4)  # its own vector, unit
        status, like = post(app["url"], {"like": item["id"], "k": 5})
        assert status == 200 and like["query_by"] == "like" and like["like"] == item["id"], like
        assert _first_within_ties(like, item["id"]) and ids(like) == ids(by_image)
    # A data: URL (what a browser's FileReader gives) is taken as well.
    status, answer = post(app["url"], {"image": "data:image/png;base64," + _b64(items[0]["uri"]), "k": 3})
    assert status == 200 and _first_within_ties(answer, items[0]["id"])


def test_words_with_an_image_rank_by_the_documented_weighted_sum(app):
    item, everything = _items(app)[3], len(_items(app))
    query = QUERIES[1]

    def scores(body):
        status, answer = post(app["url"], {**body, "k": everything, "rerank": False})
        assert status == 200 and len(answer["results"]) == everything, answer
        return {h["id"]: h["fast_score"] for h in answer["results"]}, answer

    text, _ = scores({"query": query})
    image, _ = scores({"like": item["id"]})
    for w in (0.25, 0.5, 0.8):
        both, answer = scores({"query": query, "like": item["id"], "image_weight": w})
        assert answer["query_by"] == "text+like"
        # Each item's score is (1 - w) * its words' score + w * its image's, over one length for every item.
        weighted = np.array([(1 - w) * text[i] + w * image[i] for i in both])
        ratio = weighted / np.array(list(both.values()))
        assert np.allclose(ratio, ratio[0], rtol=1e-3), ratio
        order = list(both)
        assert order != sorted(text, key=text.get, reverse=True) and order != sorted(image, key=image.get,
                                                                                      reverse=True)
    # Words are re-ranked by Slow, with or without an image beside them.
    status, answer = post(app["url"], {"query": query, "like": item["id"], "k": 5, "rerank_k": 10})
    assert status == 200 and answer["reranked"] and all(h["slow_score"] is not None for h in answer["results"])


def test_each_filter_keeps_only_matching_items_and_k_of_them(app):
    items = _items(app)
    status, listed = get_json(app["url"] + "/filters")
    assert status == 200 and listed["index_version"] == app["v1"]
    assert set(listed["fields"]) >= {"id", "media", "width", "height"}
    assert listed["fields"]["media"]["values"] == ["image"]
    narrow, wide = min(i["width"] for i in items), max(i["width"] for i in items)
    assert listed["fields"]["width"]["min"] == narrow and listed["fields"]["width"]["max"] == wide == 2 * narrow
    prefix = "0006"
    cases = [({"width": {"gte": wide}}, lambda i: i["width"] >= wide),  # 5 of 70
             ({"width": {"lte": narrow}, "id": {"prefix": prefix}},
              lambda i: i["width"] <= narrow and i["id"].startswith(prefix)),
             ({"id": {"in": [items[2]["id"], items[40]["id"], "no-such-id"]}},
              lambda i: i["id"] in (items[2]["id"], items[40]["id"])),
             ({"media": {"in": ["image"]}, "width": {"gte": 0}}, lambda i: True),
             ({"media": {"eq": "video"}}, lambda i: False)]
    for spec, keeps in cases:
        matching = {i["id"] for i in items if keeps(i)}
        for body in ({"query": QUERIES[0]}, {"like": items[7]["id"]}):
            for k in (3, 10):
                status, answer = post(app["url"], {**body, "k": k, "filter": spec, "rerank_k": 10})
                assert status == 200, answer
                got = ids(answer)
                assert set(got) <= matching, (spec, got)
                assert len(got) == min(k, len(matching)), (spec, k, got)
    assert sorted(app["wide_ids"]) == sorted(i["id"] for i in items if i["width"] == wide)


def test_bad_image_like_and_filter_requests_say_what_is_wrong(app):
    status, health = get_json(app["url"] + "/healthz")
    limit = health["limits"]["max_image_bytes"]
    too_big = base64.b64encode(os.urandom(limit + 10)).decode()
    cases = [({"image": too_big}, 413, "image: "),
             ({"image": base64.b64encode(b"GIF89a not really").decode()}, 422, "image: "),
             ({"image": "%%% not base64 %%%"}, 422, "image: is not base64"),
             ({"image": _b64(_items(app)[0]["uri"]), "like": "00001"}, 422, "image, like: give one of them"),
             ({"like": "no-such-item"}, 404, "like: no item 'no-such-item'"),
             ({"query": "a cat", "filter": {"colour": {"eq": "red"}}}, 422, "filter.colour: no such field"),
             ({"query": "a cat", "filter": {"width": {"gte": "wide"}}}, 422, "filter.width.gte: must be a number"),
             ({"query": "a cat", "filter": {"width": 3}}, 422, "filter.width"),
             ({"query": "a cat", "image_weight": 2}, 422, "image_weight"),
             ({"k": 3}, 422, "query: is empty")]
    for body, code, needle in cases:
        status, answer = post(app["url"], body)
        assert status == code and needle in answer.get("detail", ""), (str(body)[:80], status, answer)
    status, openapi = get_json(app["url"] + "/openapi.json")
    described = json.dumps(openapi)
    assert "/filters" in openapi["paths"] and all(f in described for f in ('"image"', '"like"', '"filter"'))


def test_fastslow_search_by_image_like_and_filter_from_the_terminal(app, tmp_path):
    import subprocess
    import sys

    item = _items(app)[5]
    answer = json.loads(fastslow_cli("search", "--url", app["url"], "--image", item["uri"], "-k", "3", "--json").stdout)
    assert answer["query_by"] == "image" and _first_within_ties(answer, item["id"])
    wide = 2 * min(i["width"] for i in _items(app))
    out = fastslow_cli("search", QUERIES[0], "--url", app["url"], "--like", item["id"], "-k", "4",
                       "--filter", json.dumps({"width": {"gte": wide}})).stdout
    assert f"query by text+like {item['id']!r}" in out and "re-ranked by Slow" in out, out
    rows = [line.split() for line in out.splitlines()[1:-1]]
    assert len(rows) == 4 and {r[3] for r in rows} <= set(app["wide_ids"]), out
    missing = tmp_path / "nope.png"
    for args, needle in (([f"--image={missing}"], f"--image {missing}: cannot be read"),
                         (["--filter", "{width"], "--filter: not JSON"),
                         (["a cat", "--filter", '{"width": {"gte": "x"}}'], "422 filter.width.gte: must be a number")):
        proc = subprocess.run([sys.executable, "-m", "fastslow", "search", "--url", app["url"], *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_explain_returns_slows_attention_map_per_token_for_each_reranked_result(app):
    status, answer = post(app["url"], {"query": QUERIES[0], "k": 4, "rerank_k": 8, "explain": True})
    assert status == 200 and answer["reranked"] and answer["explain_reason"] is None, answer
    for hit in answer["results"]:
        ex = hit["explain"]
        maps = np.asarray(ex["maps"])
        assert ex["frames"] is None and maps.shape == (len(ex["tokens"]), *ex["grid"]), (maps.shape, ex["grid"])
        assert np.allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-3) and (maps >= 0).all()
        # The tiny Slow's tokens are the query's characters, as many as its max_length takes.
        assert QUERIES[0].startswith("".join(ex["tokens"])) and len(ex["tokens"]) >= 20
        assert 1 <= hit["fast_rank"] <= 8
    # The same order as without explain; the ranks before re-ranking are Fast's.
    _, plain = post(app["url"], {"query": QUERIES[0], "k": 4, "rerank_k": 8})
    _, fast = post(app["url"], {"query": QUERIES[0], "k": 8, "rerank": False})
    assert ids(plain) == ids(answer)
    assert [ids(fast).index(h["id"]) + 1 for h in answer["results"]] == [h["fast_rank"] for h in answer["results"]]
    # Nothing re-ranked, nothing explained, and the answer says why.
    for body in ({"query": QUERIES[0], "rerank": False}, {"like": _items(app)[0]["id"]}):
        status, answer = post(app["url"], {**body, "k": 3, "explain": True})
        assert status == 200 and "only re-ranked results are explained" in answer["explain_reason"]
        assert all(h.get("explain") is None for h in answer["results"])
