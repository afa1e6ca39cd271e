"""Headless Chromium for the page tests: the system's Chromium (Debian's `chromium` package) driven by Playwright."""

from __future__ import annotations

import contextlib
import os
import time

import pytest

CHROMIUM = "/usr/bin/chromium"
# No sandbox (tests run as root in containers); nothing in the background may reach the network.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def chromium():
    """A launched browser; the test fails (never skips) when Chromium or Playwright is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (the page tests drive "
                    "the system Chromium; `playwright install` is not used)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


# A result tile's image is shown once the page has fetched it and set a blob: URL that decoded.
SHOWN = "x => x.src.startsWith('blob:') && x.complete && x.naturalWidth > 0"
# For a failure message: the page's /media fetches the browser has timed so far,
# [id, start s, duration s, HTTP status (0: no answer)].
MEDIA_FETCHES = """performance.getEntriesByType('resource').filter(e => e.name.includes('/media/')).map(e =>
    [e.name.split('/').pop(), +(e.startTime / 1000).toFixed(2), +(e.duration / 1000).toFixed(2), e.responseStatus])"""


def wait_for_tile_images(page, timeout_s: float) -> None:
    """Wait until every result tile's image is shown (the page asks again for one the app answers 503 for, for
    about two minutes); past `timeout_s` fail naming those that are not, with every media fetch the page made."""
    deadline, imgs = time.time() + timeout_s, page.locator(".tile img")
    while missing := imgs.evaluate_all(f"i => i.filter(x => !({SHOWN})).map(x => [x.alt, x.src, x.complete])"):
        assert time.time() < deadline, (f"result images not shown after {timeout_s:.0f} s", missing,
                                        page.evaluate(MEDIA_FETCHES))
        time.sleep(0.2)


def wait_for_results(page, count: int, timeout_s: float = 120) -> None:
    """Wait until the page shows `count` result tiles; fail at once when it says it got no answer, and past
    `timeout_s` fail with what its status line and error say (a slow answer and a refused one read differently)."""
    deadline, tiles = time.time() + timeout_s, page.locator(".tile")
    while tiles.count() != count:
        status, error = page.inner_text("#status"), page.inner_text("#error")
        assert status != "No answer.", f"the page got no answer: {error}"
        assert time.time() < deadline, (f"{tiles.count()} result tiles, not {count}, after {timeout_s:.0f} s; "
                                        f"status {status!r}, error {error!r}")
        time.sleep(0.2)
