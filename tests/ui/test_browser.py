"""The UI in a real browser (headless Chromium driven by Playwright): what a person sees and clicks."""

from __future__ import annotations

import pytest

from tests.app_process import running_app, write_library
from tests.browser import app_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # each test here drives Chromium against the app (`python app.py`)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    write_library(root / "loras")
    with running_app(root) as url, app_page(url, root) as page:
        yield page


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
