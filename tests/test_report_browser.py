"""report.html in a real headless browser (Debian's chromium driven by Playwright).

Checks what only a browser can: the page loads with no console or page errors and makes no request
beyond its own file, the sample browser switches questions and runs, the trait filter hides
low-scoring answers, and a malicious answer shows as text without running. Saves a screenshot to
tmp_path/report.png and /tmp/traitloop-artifacts/report.png.

Needs, once per machine (the test fails, not skips, without them):
    apt-get update && apt-get install -y chromium
    .venv/bin/pip install playwright        # no `playwright install`: we use /usr/bin/chromium
Set TRAITLOOP_CHROMIUM to use a chromium binary elsewhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_report import MALICIOUS, QUESTIONS, TRAIT_OFFSETS, make_run

from traitloop.report_html import write_report

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("TRAITLOOP_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path("/tmp/traitloop-artifacts")
INSTALL_HELP = (
    "install with: apt-get update && apt-get install -y chromium && .venv/bin/pip install playwright (no `playwright install` needed)"
)


def sync_playwright():
    """Playwright's sync API, or a test failure that says how to install what is missing."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        pytest.fail(f"Python package playwright is not installed; {INSTALL_HELP}")
    if not CHROMIUM.is_file():
        pytest.fail(f"chromium not found at {CHROMIUM}; {INSTALL_HELP} (or set TRAITLOOP_CHROMIUM)")
    return start()


@pytest.fixture
def browser_page():
    """A fresh headless chromium page that records console errors, page errors, dialogs and requests."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        events = {"console_errors": [], "page_errors": [], "dialogs": [], "requests": []}
        page.on("console", lambda msg: events["console_errors"].append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: events["page_errors"].append(str(err)))
        page.on("dialog", lambda dialog: (events["dialogs"].append(dialog.message), dialog.dismiss()))
        page.on("request", lambda request: events["requests"].append(request.url))
        try:
            yield page, events
        finally:
            browser.close()


def visible_answers(page) -> list[str]:
    """Texts of the answers the sample browser shows now."""
    return [card.inner_text() for card in page.locator(".sb-answer .sb-text").all() if card.is_visible()]


def test_report_works_in_a_real_browser(tmp_path, browser_page):
    page, events = browser_page
    curve = [20.0, 35.0, 50.0, 65.0]
    run = make_run(tmp_path / "run", curve, malicious=True)
    report = write_report(run)

    page.goto(report.as_uri())
    page.wait_for_selector(".sb-answer")

    # question 0 first: base + 4 cycles, 2 samples each; one cycle-0 answer is the malicious text, shown as text
    first = visible_answers(page)
    assert len(first) == 2 * 5
    assert all(text.startswith("Q0 ") or text == MALICIOUS for text in first)
    assert MALICIOUS in first
    assert page.locator(".sb-column h4").all_inner_texts() == ["base", "cycle 0", "cycle 1", "cycle 2", "cycle 3"]

    # another question: the answers shown change to that question's
    page.select_option("#sb-question", label=QUESTIONS[2])
    second = visible_answers(page)
    assert len(second) == 2 * 5
    assert all(text.startswith("Q2 ") for text in second), second

    # the trait filter: answers below the minimum are hidden, the rest stay
    threshold = 50
    page.fill("#sb-min-trait", str(threshold))
    cards = page.locator(".sb-answer").all()
    for card in cards:
        trait = float(card.get_attribute("data-trait"))
        assert card.is_visible() == (trait >= threshold), (trait, card.inner_text())
    assert page.locator('.sb-column[data-column="cycle 0"] .sb-filtered').is_visible()  # cycle 0 scores 0 and 40 here
    assert not page.locator('.sb-column[data-column="cycle 3"] .sb-filtered').is_visible()
    expected = sum(min(100.0, max(0.0, t + off)) >= threshold for t in [30.0, *curve] for off in TRAIT_OFFSETS)
    assert 0 < expected < len(cards)
    assert len(visible_answers(page)) == expected
    assert page.inner_text("#sb-count") == f"showing {expected} of {len(cards)} answers"

    # clearing the filter shows everything again
    page.fill("#sb-min-trait", "0")
    assert len(visible_answers(page)) == len(cards)
    page.fill("#sb-min-trait", str(threshold))

    # figures rendered, verdict table readable
    assert page.locator("figure img").first.evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.locator("table.verdicts .badge").first.inner_text() == "amplified"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copy(shot, ARTIFACTS / "report.png")
    assert shot.stat().st_size > 10_000

    assert events["console_errors"] == []
    assert events["page_errors"] == []
    assert events["dialogs"] == [], "model output ran as script"
    assert all(url.startswith(("file:", "data:")) for url in events["requests"]), events["requests"]


def test_sweep_report_switches_runs_in_a_real_browser(tmp_path, browser_page):
    page, events = browser_page
    sweep = tmp_path / "sweep"
    make_run(sweep / "runs" / "short", [20.0, 30.0], seed=0)
    make_run(sweep / "runs" / "long", [20.0, 30.0, 40.0], seed=1, base_trait=None)
    report = write_report(sweep)

    page.goto(report.as_uri())
    page.wait_for_selector(".sb-answer")
    assert page.locator("#sb-run-label").is_visible()
    first_columns = page.locator(".sb-column h4").all_inner_texts()
    other = [
        name for name in page.locator("#sb-run option").all_inner_texts() if name != page.locator("#sb-run option:checked").inner_text()
    ][0]
    page.select_option("#sb-run", label=other)
    second_columns = page.locator(".sb-column h4").all_inner_texts()
    assert {tuple(first_columns), tuple(second_columns)} == {("cycle 0", "cycle 1", "cycle 2"), ("base", "cycle 0", "cycle 1")}
    assert page.locator("#sb-question option").count() == len(QUESTIONS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sweep-report.png"), full_page=True)
    assert events["console_errors"] == [] and events["page_errors"] == []
