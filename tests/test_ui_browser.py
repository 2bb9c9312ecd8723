"""The UI in a real browser (headless Chromium driven by Playwright): what a person sees and clicks."""

from __future__ import annotations

import shutil

import pytest

from tests.app_process import running_app
from tests.test_app import write_library

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "the browser test needs Chromium: apt-get install chromium (CI's .ci/run installs it)"
    root = tmp_path_factory.mktemp("browser")
    write_library(root / "loras")
    with running_app(root) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="load")  # not "networkidle": gradio keeps a heartbeat open while the app has a gr.State
        page.locator("#header").wait_for()
        page.root = root  # type: ignore[attr-defined]
        yield page
        browser.close()


def test_header_and_tabs_in_order(page):
    header = page.locator("#header").inner_text()
    assert "tiny" in header and "blocks of colour" in header
    tabs = [text.strip() for text in page.get_by_role("tab").all_inner_texts()]
    assert tabs[:4] == ["Discover", "Generate", "Train", "Publish"]


def test_generate_with_a_tag_shows_an_image_and_its_recipe(page):
    page.get_by_role("tab", name="Generate").click()
    page.locator("#prompt textarea").fill("a lighthouse <lora:wtrclr_style:0.8>")
    page.locator("#generate-button").click()
    image = page.locator("#gallery img").first
    image.wait_for(timeout=60_000)
    page.get_by_text("wtrclr, a lighthouse").first.wait_for(timeout=10_000)  # the recipe shows the prompt as sent
    page.screenshot(path=str(page.root / "generate.png"))  # type: ignore[attr-defined]
    assert image.evaluate("img => img.naturalWidth") == 64


def test_a_bad_tag_shows_an_error_that_quotes_it(page):
    page.get_by_role("tab", name="Generate").click()
    page.locator("#prompt textarea").fill("a lighthouse <lora:wtrclr_style:nine>")
    page.locator("#generate-button").click()
    page.get_by_text("<lora:wtrclr_style:nine>").last.wait_for(timeout=30_000)
