"""Driving the bot in Debian's chromium with Playwright: launching, signing in, screenshots, and
the steps more than one browser test takes."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CSP_BLOCKED = re.compile(r"Loading the \w+ '([^']+)' violates the following Content Security Policy.*blocked")
SCREENSHOTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"


@contextmanager
def open_browser() -> Iterator[object]:
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is missing: `apt-get install chromium` (`make test` installs it when run "
                    "as root); the browser tests drive it with Playwright.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def sign_in(browser, url: str, username: str, password: str, wait: bool = True):
    """A new page signed in as ``username``; ``page.requests`` records every URL it fetches and
    ``page.console`` every console message, ``page.blocked`` every request the browser refused."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.console = []
    page.on("console", lambda message: page.console.append(message.text))
    page.blocked = []  # what the page's Content-Security-Policy stopped before it left (Chromium says so)
    page.on("console", lambda message: page.blocked.extend(CSP_BLOCKED.findall(message.text)))
    page.goto(url)
    page.get_by_label("username").fill(username)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    if wait:
        page.wait_for_selector("#header >> text=signed in as", timeout=30_000)
    return page


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def tabs(page) -> set[str]:
    return {name.strip() for name in page.get_by_role("tab").all_inner_texts()}


def only_local(page) -> None:
    outside = [url for url in page.requests if urlparse(url).hostname not in ("127.0.0.1", "localhost", None)
               and not url.startswith(("data:", "blob:")) and url not in page.blocked]
    assert outside == [], f"the page fetched from outside the machine: {outside}"


def ask(page, question: str, timeout_ms: int = 90_000) -> str:
    """Send a chat question with Enter, as most students do, and wait for the finished answer (its
    footer); returns the answer's text. (Clicking Send right after filling in a long question can miss:
    the box grows to fit it and moves the button a frame later. Other tests click Send.)"""
    answers = page.locator("#chatbot .bot")
    # As a student waits for Stop to go before asking again: while the last answer's event ends (its footer
    # shows a moment before), the page takes no new question.
    page.locator("#chat-stop").wait_for(state="hidden", timeout=timeout_ms)
    before = answers.count()
    box = page.locator("#chat-input textarea")
    box.fill(question)
    box.press("Enter")
    try:
        page.wait_for_function(
            "(before) => { const all = document.querySelectorAll('#chatbot .bot');"
            " return all.length > before && all[all.length - 1].innerText.includes('Answered by'); }",
            arg=before, timeout=timeout_ms)
    except PlaywrightTimeout:
        last = answers.last.inner_text() if answers.count() > before else "(no answer shown)"
        notices = page.locator(".toast-body").all_inner_texts()
        shot(page, "no-finished-answer")
        raise AssertionError(f"no finished answer to {question!r} in {timeout_ms / 1000:.0f} s; the page shows: "
                             f"{last!r}; notices: {notices}") from None
    return answers.last.inner_text()


def open_review(page) -> None:
    page.get_by_role("tab", name="Review").click()
    page.locator("#review-prompt").get_by_role("heading", name="Question").wait_for(timeout=30_000)


def judge_with_keys(page, key: str) -> None:
    """Choose with ``key`` (1-4), submit with Enter, and wait until the page counts the judgment as
    sent (the figures line) and shows the next item."""
    judged = page.locator("#review-figures")
    before = int(judged.inner_text().split(" judged in this tab")[0].strip())
    page.locator("body").click(position={"x": 5, "y": 5})  # focus the page, not a text field
    page.keyboard.press(key)
    assert page.locator("#review-choice input:checked").count() == 1, f"key {key} chose an answer"
    page.keyboard.press("Enter")
    try:
        page.wait_for_function("(n) => document.querySelector('#review-figures').innerText.startsWith(`${n} judged`)",
                               arg=before + 1, timeout=30_000)
    except Exception:
        shot(page, "judge-failed")
        warnings = page.locator(".toast-body").all_inner_texts()
        raise AssertionError(f"judgment {before + 1} was not counted; warnings shown: {warnings}") from None
