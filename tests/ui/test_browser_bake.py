"""Bake a blend and follow the library, in a real browser (headless Chromium driven by Playwright)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from lora_space.library.tools import read_lora_file
from tests.app_process import running_app, write_library
from tests.browser import app_page
from tests.lora_factory import write_lora

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # each test here drives Chromium against the app (`python app.py`)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_bake")
    write_library(root / "loras")
    with running_app(root) as url, app_page(url, root) as page:
        page.get_by_role("tab", name="Generate").click(timeout=60_000)
        yield page


def sweep_choices(page) -> list[str]:
    page.locator("#sweep-x input").click()
    options = page.get_by_role("option")
    options.first.wait_for(timeout=10_000)
    names = [text.strip() for text in options.all_inner_texts()]
    page.keyboard.press("Escape")
    return names


def test_bake_blend_button_puts_the_mix_into_the_library(page):
    page.locator("#prompt textarea").fill("a lighthouse <lora:wtrclr_style:0.8> <lora:neon:0.4>")
    page.get_by_text("Blend recipe: save, load, bake").click()
    page.locator("#bake-button").click()
    page.locator("#bake-summary").get_by_text("joined your library").wait_for(timeout=60_000)
    summary = page.locator("#bake-summary").inner_text()
    assert "wtrclr_style+neon" in summary and "exact" in summary
    assert "wtrclr_style+neon" in page.locator("#library-table").inner_text()  # the library list shows it at once
    baked = read_lora_file(page.root / "loras" / "wtrclr_style+neon.safetensors")  # type: ignore[attr-defined]
    assert baked.modules and baked.metadata["lora_space.bake"]
    page.screenshot(path=str(page.root / "bake.png"))  # type: ignore[attr-defined]


def test_the_sweep_pickers_follow_the_library(page):
    page.get_by_text("Strength sweep: where does a LoRA start to break?").click()
    assert "late_arrival" not in sweep_choices(page)
    write_lora(page.root / "loras" / "late_arrival.safetensors", 21)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Refresh").click()
    # The refresh answers the table and the pickers at once: once the table shows it, so do the pickers.
    expect(page.locator("#library-table")).to_contain_text("late_arrival", timeout=30_000)
    assert "late_arrival" in sweep_choices(page)
