"""The search app's /media route and its search page in headless Chromium (the app: conftest's `app`, deployed
from configs/serve_synth.yaml on a local Ray; see tests/test_serve_app.py): /media serves the live version's items
and nothing else; the page shows what the API answers and fetches nothing from elsewhere.
"""

import base64
import io
import json
import os

import numpy as np
import pytest
from browser import chromium, wait_for_results, wait_for_tile_images
from helpers import REPO
from PIL import Image
from serve_helpers import QUERIES, get_raw, ids, media_path, post

from fastslow.index.publish import load_version


@pytest.mark.faults
@pytest.mark.timeout(600)
def test_media_serves_indexed_items_and_nothing_else(app, fault_record):
    status, got = post(app["url"], {"query": QUERIES[1], "k": 6, "rerank": False})
    assert status == 200, got
    meta = {r["id"]: r for r in load_version(app["root"], app["v1"]).metadata.to_pylist()}
    assert load_version(app["root"], app["v1"]).manifest["model"]["collection_root"] == app["images"]
    # The symlinked item may be among the hits: it is checked below, refused.
    for item_id in [i for i in ids(got) if i != app["symlink_id"]] + [app["slash_id"]]:
        for path in (media_path(item_id), "/media/" + item_id):  # '/' in an id may be sent encoded or not
            status, headers, body = get_raw(app["url"], path)
            assert status == 200, (path, body[:300])
            assert headers["content-type"] == "image/png" and headers["cache-control"] == "private, max-age=3600"
            with open(meta[item_id]["uri"], "rb") as f:
                stored = f.read()
            assert body == stored
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), np.asarray(Image.open(io.BytesIO(stored))))

    uri = meta[ids(got)[0]]["uri"]
    refused = ["/media/..%2F..%2Fetc%2Fpasswd", "/media/../../etc/passwd", "/media//etc/passwd",
               "/media/%2Fetc%2Fpasswd", "/media/%2e%2e/%2e%2e/etc/passwd", "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
               "/media/%252e%252e%252fetc%252fpasswd", "/media/..%5c..%5cetc%5cpasswd", "/media/" + uri,
               media_path(uri), "/media/no-such-item", "/media/", "/media/" + "x" * 5000,
               media_path(app["symlink_id"])]  # indexed, but its file resolves outside the collection
    for path in refused:
        status, headers, body = get_raw(app["url"], path)
        assert status == 404, (path, status, body[:300])
        assert headers["cache-control"] == "no-store" and isinstance(json.loads(body)["detail"], str), path
    status, _, body = get_raw(app["url"], media_path(app["symlink_id"]))
    assert "outside the collection" in json.loads(body)["detail"]
    fault_record("input", "media paths: traversal, absolute, encoded, symlink out, unknown id", tried=len(refused),
                 refused=len(refused), five_xx=0)


def test_search_page_in_headless_chromium(app):
    url, query = app["url"], QUERIES[0]
    with chromium() as browser:
        from playwright.sync_api import expect

        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        requests, errors = [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.fill("#query", query)
        page.fill("#k", "8")
        page.fill("#rerank-k", "12")
        page.click("#search")
        # Polled from here: the page's CSP (no 'unsafe-eval') refuses Playwright's in-page wait_for_function.
        wait_for_results(page, 8)
        wait_for_tile_images(page, 150)
        _, want = post(url, {"query": query, "k": 8, "rerank": True, "rerank_k": 12})
        tiles = page.locator(".tile")
        assert [tiles.nth(i).get_attribute("data-id") for i in range(8)] == ids(want)
        assert "Slow re-ranked" in page.inner_text("#status") and "total" in page.inner_text("#timings")
        assert app["v1"] in page.inner_text("#version") and not page.is_visible("#notice")
        assert all(t != "slow \u2014" for t in page.locator(".tile .slow").all_inner_texts())
        assert page.locator(".tile .caption").first.inner_text() == want["results"][0]["caption"]
        shot = os.path.join(REPO, "out", "test-artifacts", "search-page.png")
        os.makedirs(os.path.dirname(shot), exist_ok=True)
        page.screenshot(path=shot, full_page=True)
        print(f"search page screenshot: {shot}")

        page.uncheck("#rerank")
        page.click("#search")
        expect(page.locator("#status")).to_contain_text("Fast order", timeout=60_000)
        _, fast = post(url, {"query": query, "k": 8, "rerank": False})
        assert [tiles.nth(i).get_attribute("data-id") for i in range(8)] == ids(fast)
        assert page.locator(".tile .slow").all_inner_texts() == ["slow \u2014"] * 8

        # A degraded and partial answer (made up here: the real ones are tested above) is shown as such.
        page.route("**/search", lambda route: route.fulfill(json={
            **want, "reranked": False, "degraded": True, "degraded_reason": "re-ranker timed out after 5 s",
            "partial": True, "shards": {"answered": [0], "failed": {"1": "shard 1 timed out after 5 s"}}}))
        page.click("#search")
        page.wait_for_selector("#notice:not([hidden])", timeout=30_000)
        notice = page.inner_text("#notice")
        assert "re-ranker timed out after 5 s" in notice and "shard 1 timed out" in notice
        page.unroute("**/search")

        page.fill("#query", "   ")  # passes the form's `required`; the app answers 422
        page.click("#search")
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert "422" in page.inner_text("#error") and "query: is empty" in page.inner_text("#error")
    assert not errors, errors
    # Nothing leaves the app's origin: the images are shown from blob: URLs of that origin.
    origins = (url + "/", "blob:" + url + "/")
    assert requests and all(r.startswith(origins) for r in requests), [r for r in requests if not r.startswith(origins)]


def test_search_page_more_like_this_an_image_and_a_filter(app):
    url = app["url"]
    with chromium() as browser:
        from playwright.sync_api import expect

        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        # The live index's fields are offered as filters.
        expect(page.locator("#filters [data-field='width'][data-op='gte']")).to_be_visible(timeout=30_000)
        assert page.locator("#filters select[data-field='media'] option").all_inner_texts() == ["any", "image"]
        page.fill("#query", QUERIES[0])
        page.fill("#k", "6")
        page.click("#search")
        wait_for_results(page, 6)

        # "More like this" on the third tile: the item's own vector, so it comes first (within ties).
        third = page.locator(".tile").nth(2).get_attribute("data-id")
        page.fill("#query", "")
        page.locator(".tile .more").nth(2).click()
        expect(page.locator("#status")).to_contain_text(f"items like {third}", timeout=60_000)
        _, want = post(url, {"like": third, "k": 6})
        assert [page.locator(".tile").nth(i).get_attribute("data-id") for i in range(6)] == ids(want)
        assert page.inner_text("#by-text") == f"like {third}"

        # An image file chosen (as dropped) is the query: the item whose file it is comes first.
        item = next(i for i in load_version(app["root"], app["v1"]).metadata.to_pylist() if i["id"] == "00010")
        page.locator("#image-file").set_input_files(item["uri"])
        expect(page.locator("#by-text")).to_have_text("image " + os.path.basename(item["uri"]), timeout=10_000)
        page.click("#search")
        expect(page.locator("#status")).to_contain_text("the image", timeout=60_000)
        with open(item["uri"], "rb") as f:
            _, want = post(url, {"image": base64.b64encode(f.read()).decode(), "k": 6})
        assert page.locator(".tile").first.get_attribute("data-id") == ids(want)[0]

        # "Why": each re-ranked tile gets Slow's attention as a heat map over its image and the query's tokens;
        # hovering a token draws that token's map.
        page.click("#clear-by")
        page.fill("#query", QUERIES[0])
        page.check("#explain")
        page.click("#search")
        expect(page.locator(".tile canvas.heat")).to_have_count(6, timeout=60_000)
        _, explained = post(url, {"query": QUERIES[0], "k": 6, "explain": True})
        tokens = explained["results"][0]["explain"]["tokens"]
        assert page.locator(".tile").first.locator(".tokens span").count() == len(tokens)
        heat = page.locator(".tile").first.locator("canvas.heat")
        mean = heat.evaluate("c => c.toDataURL()")
        page.locator(".tile").first.locator(".tokens span").nth(2).hover()
        assert heat.evaluate("c => c.toDataURL()") != mean
        assert "\u2192 #1" in page.locator(".tile").first.locator(".moved").inner_text()
        page.uncheck("#explain")

        # A filter: only the wide images, with words.
        page.fill("#query", QUERIES[1])
        wide = min(load_version(app["root"], app["v1"]).metadata.column("width").to_pylist()) * 2
        page.fill("#filters [data-field='width'][data-op='gte']", str(wide))
        page.click("#search")
        expect(page.locator("#status")).to_contain_text("filtered", timeout=60_000)
        wait_for_results(page, 5)  # 6 asked, 5 pass
        shown = [page.locator(".tile").nth(i).get_attribute("data-id") for i in range(5)]
        assert sorted(shown) == sorted(app["wide_ids"])
    assert not errors, errors
