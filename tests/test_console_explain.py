"""The web console's "Explain" (issue 23): one row's contributions drawn as bars, in headless Chromium.

A model with an exact explanation gets an Explain button beside Predict; it posts the form to
``/models/{name}/explain`` and draws each input's contribution to the raw score, largest first (the
predicted class's, for several scores), with the expected value they add up from. Skipped without
Chromium and Playwright, as tests/test_console.py is.
"""

from __future__ import annotations

import httpx
from tests.test_console import CHROMIUM, _browser

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]


def _signed(value: float) -> str:
    digits = 1 if abs(value) >= 100 else 3 if abs(value) >= 1 else 4
    return f"{value:+.{digits}f}"


def test_explain_draws_one_rows_contributions_as_bars(examples_server) -> None:
    sync_playwright = _browser()
    record = {"length": 5.1, "width": 2.4}
    expected = httpx.post(examples_server.url + "/models/iris/explain", json=record).json()
    label = expected["predictions"][0]
    contributions = expected["contributions"][0][label]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            failed: list[str] = []
            page.on("pageerror", lambda error: failed.append(str(error)))
            page.goto(examples_server.url + "/")
            page.wait_for_selector("#try-iris", timeout=15_000)
            assert page.locator("#try-score button.secondary").count() == 0  # a Python class: no exact explanation
            page.fill("#try-iris input[name=length]", "5.1")
            page.fill("#try-iris input[name=width]", "2.4")
            page.click("#try-iris button.secondary")
            page.wait_for_selector("#explain-iris .contrib", timeout=10_000)
            rows = page.locator("#explain-iris .contrib")
            drawn = {rows.nth(i).get_attribute("data-feature"): rows.nth(i).inner_text() for i in range(rows.count())}
            assert set(drawn) == set(contributions)
            for name, value in contributions.items():
                assert _signed(value) in drawn[name], (name, drawn[name])
            largest = max(contributions, key=lambda n: abs(contributions[n]))
            assert rows.nth(0).get_attribute("data-feature") == largest  # largest first
            bar = page.locator(f'#explain-iris .contrib[data-feature="{largest}"] .contrib-bar span')
            assert bar.get_attribute("class") == ("up" if contributions[largest] >= 0 else "down")
            assert bar.evaluate("e => e.style.width") == "50%"  # the largest spans half the bar
            assert f"score of {label}" in page.locator("#explain-iris .meta").inner_text()

            page.fill("#try-reviews textarea", "最高の映画でした。もう一度観たい")
            page.click("#try-reviews button.secondary")
            page.wait_for_selector("#explain-reviews.shown", timeout=20_000)
            assert page.locator("#explain-reviews .contrib").count(), page.locator("#explain-reviews").inner_text()
            page.click("#try-reviews button[type=submit]")  # the text form sends its field (it sent 'undefined')
            page.wait_for_selector("#result-reviews .answer", timeout=10_000)
            assert page.locator("#result-reviews .answer").inner_text().startswith("4.")
            names = page.locator("#explain-reviews .contrib").evaluate_all("rows => rows.map(r => r.dataset.feature)")
            assert "最高" in names and len(names) <= 13  # the twelve largest and the rest summed
            assert failed == [], failed
        finally:
            browser.close()
