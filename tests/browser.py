"""Headless Chromium for the browser tests (Playwright): the browser, and a page showing the app."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium (a Playwright `Browser`), closed afterwards."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "the browser test needs Chromium: apt-get install chromium (CI's .ci/run installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def app_page(url: str, root: Path) -> Iterator:
    """A page of a fresh browser on the app at `url`, once it has loaded and shows its header.

    `page.root` is the app's folder (`running_app(root)`), for tests that look at its files.
    """
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="load", timeout=90_000)  # not "networkidle": gradio keeps a heartbeat open while the app has a gr.State
        page.locator("#header").wait_for(timeout=60_000)
        page.root = root  # type: ignore[attr-defined]
        yield page


def pick(page, label: str, value: str) -> None:
    """Type `value` into the dropdown or box labelled `label` and confirm it with Enter."""
    box = page.locator(f"input[aria-label='{label}']").first
    box.fill(value)
    box.press("Enter")


def train_field(page, key: str):
    """The Train tab's setting `key` (its elem_id `train-<key>`)."""
    return page.locator(f"#train-{key} input").first


def set_train_field(page, key: str, value: str) -> None:
    """Type `value` into the Train tab's setting `key` and confirm it with Enter."""
    train_field(page, key).fill(value)
    train_field(page, key).press("Enter")
