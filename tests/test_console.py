"""The web console at ``/``: a self-contained page, its live stats, and the whole flow in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FERRY_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = ROOT / "artifacts" / "console.png"


def test_console_page_is_self_contained(examples_server) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    response = httpx.get(examples_server.url + "/", headers=browser)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    page = response.text
    assert "<title>Ferry console</title>" in page
    external = re.findall(r"""(?:src|href|url)\s*[=(]\s*["']?(?:https?:)?//""", page)
    assert external == [], "no CDN or external asset"
    # Anyone else asking for / is a liveness probe, as KServe's servers answer it.
    probe = httpx.get(examples_server.url + "/")
    assert probe.status_code == 200 and probe.json() == {"status": "alive"}


def test_stats_report_rate_latency_and_errors(examples_server) -> None:
    url = examples_server.url
    httpx.get(url + "/stats")  # the first snapshot opens the window
    for _ in range(9):
        httpx.post(url + "/models/iris/predict", json={"length": 5.1, "width": 2.4})
    httpx.post(url + "/models/iris/predict", json={"length": "long"})
    stats = httpx.get(url + "/stats").json()["models"]["iris"]
    assert stats["rate_per_s"] > 0
    assert stats["error_rate"] == pytest.approx(0.1)
    assert 0 < stats["p50_ms"] <= stats["p99_ms"]


def _browser():  # type: ignore[no-untyped-def]
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/ci-browser installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; no browser download is needed)")
    return sync_playwright


def test_console_in_headless_chromium(examples_server) -> None:
    sync_playwright = _browser()
    args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            failed: list[str] = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.on("pageerror", lambda error: failed.append(str(error)))
            page.goto(examples_server.url + "/")
            # 1-2. every model is listed with its version and state
            page.wait_for_selector("#try-iris", timeout=15_000)
            for name in ("iris", "diabetes", "score", "reviews"):
                card = page.locator(f"#model-{name}")
                assert "READY" in card.inner_text(), name
            assert "setosa, versicolor, virginica" in page.locator("#model-iris").inner_text()
            assert page.locator("#try-reviews textarea").count() == 1  # a text model gets a textarea
            # 3-4. the iris form predicts
            page.fill("#try-iris input[name=length]", "5.1")
            page.fill("#try-iris input[name=width]", "2.4")
            page.click("#try-iris button[type=submit]")
            page.wait_for_selector("#result-iris .answer", timeout=10_000)
            assert page.locator("#result-iris .answer").inner_text() == "virginica"
            assert "X-Request-ID" in page.locator("#result-iris").inner_text()
            # live numbers: after two polls the iris p50 is drawn
            # (null-safe: the cards are redrawn on every poll, so the element may briefly not exist)
            page.wait_for_function(
                "() => document.querySelector('#model-iris .chart:nth-child(2) .value')?.textContent.includes('ms')",
                timeout=10_000,
            )
            # 5. the screenshot, kept as a CI artifact
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert failed == [], failed
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on PATH")
def test_chromium_is_the_debian_build() -> None:
    assert os.access(CHROMIUM, os.X_OK)
