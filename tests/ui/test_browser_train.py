"""The Train tab in a real browser (headless Chromium driven by Playwright) against the app in tiny mode,
as on a Space (many visitors): upload the example zip, read the report, train a few steps, watch the
loss plot and the job finish, try the LoRA in Generate, find the job again after a reload, and see
that another visitor's job list does not show it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from lora_space.ui.caller import STORAGE_KEY
from tests.app_process import SPACE_ENV, running_app
from tests.browser import chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # each test here drives Chromium against the app (`python app.py`)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flat_shapes.zip"
STEPS = 8


@pytest.fixture(scope="module")
def space_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_train")
    with running_app(root, **SPACE_ENV) as url, chromium() as browser:
        yield browser, url, root


@pytest.fixture(scope="module")
def page(space_app):
    """Alice's page (her own browser context, so her own visitor id)."""
    browser, url, root = space_app
    page = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
    open_app(page, url)
    page.root = root  # type: ignore[attr-defined]
    page.url_ = url  # type: ignore[attr-defined]
    return page


def open_app(page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    page.locator("#header").wait_for(timeout=120_000)


def not_blank(path: Path) -> bool:
    """A screenshot that shows something: many colours and real contrast, not one flat fill."""
    image = Image.open(path).convert("RGB")
    colours = image.getcolors(maxcolors=1_000_000) or []
    return len(colours) > 50 and max(ImageStat.Stat(image).stddev) > 10


def coloured_pixels(path: Path) -> int:
    """Pixels of a saturated colour (plot lines), as opposed to the grey of axes, text and frames."""
    image = Image.open(path).convert("RGB")
    return sum(1 for red, green, blue in image.get_flattened_data() if max(red, green, blue) - min(red, green, blue) > 80)


def test_upload_shows_the_report_captions_and_the_zips_settings(page):
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-zip input[type=file]").set_input_files(str(EXAMPLE))
    report = page.locator("#train-report")
    report.get_by_text("12 images").wait_for(timeout=60_000)
    assert "12 captioned" in report.inner_text()
    assert "course (images/ + captions/)" in report.inner_text()
    assert "AdamW8bit" in report.inner_text()  # the fallback to AdamW is said, not hidden
    page.locator("#train-thumbs img").first.wait_for(timeout=10_000)
    assert page.locator("#train-captions").get_by_text("flatshape_style, a white circle on a blue background").count() >= 1
    assert page.locator("#train-trigger textarea, #train-trigger input").first.input_value() == "flatshape_style"
    assert page.locator("#train-max-train-steps input").first.input_value() == "200"  # from the zip's config.json


def test_a_short_run_updates_the_loss_plot_and_finishes(page):
    steps = page.locator("#train-max-train-steps input").first
    steps.fill(str(STEPS))
    steps.press("Enter")
    warmup = page.locator("#train-lr-warmup-steps input").first  # the zip warms up 10 steps, longer than this run
    warmup.fill("0")
    warmup.press("Enter")
    sample_every = page.locator("#train-sample-every input").first
    sample_every.fill("4")
    sample_every.press("Enter")
    page.locator("#train-start").click()
    progress = page.locator("#train-progress")
    progress.get_by_text(re.compile(r"(queued|running|done) · step")).wait_for(timeout=60_000)
    plot = page.locator("#train-loss")
    # the loss plot draws training points while the job runs (the timer polls the job)
    plot.locator("canvas, svg").first.wait_for(timeout=120_000)
    progress.get_by_text(f"done · step {STEPS} / {STEPS}").wait_for(timeout=300_000)
    status = page.locator("#train-status").inner_text()
    assert "done" in status and "flatshape_style_" in status
    page.locator("#train-samples img").first.wait_for(timeout=30_000)
    page.locator("#train-lora").wait_for(timeout=10_000)
    shot = page.root / "train.png"  # type: ignore[attr-defined]
    page.screenshot(path=str(shot), full_page=True)
    assert not_blank(shot)
    plot_shot = page.root / "loss.png"  # type: ignore[attr-defined]
    plot.screenshot(path=str(plot_shot))
    assert coloured_pixels(plot_shot) > 30, "the loss plot draws no coloured line"
    from playwright.sync_api import expect

    expect(page.locator("#train-jobs")).to_contain_text(f"{STEPS}/{STEPS}", timeout=10_000)  # the list follows the job


def test_try_in_generate_fills_a_slot_and_the_lora_generates(page):
    name = page.locator("#train-lora-name textarea, #train-lora-name input").first.input_value()
    assert name.startswith("flatshape_style_")
    page.locator("#train-try").click()
    page.get_by_role("tab", name="Generate", selected=True).wait_for(timeout=10_000)
    page.wait_for_function(f"() => [...document.querySelectorAll('input')].some(el => el.value === '{name}')", timeout=10_000)
    page.locator("#prompt textarea").fill("a red circle")
    page.locator("#generate-button").click()
    page.locator("#gallery img").first.wait_for(timeout=60_000)
    page.get_by_text("flatshape_style, a red circle").first.wait_for(timeout=10_000)  # the trigger word went in
    assert not list((page.root / "loras").rglob("flatshape_style_*"))  # type: ignore[attr-defined]  # on a Space: Alice's own library


def test_publish_selects_the_lora_in_the_publish_tab(page):
    page.get_by_role("tab", name="Train").click()
    name = page.locator("#train-lora-name textarea, #train-lora-name input").first.input_value()
    page.locator("#train-publish").click()
    page.get_by_role("tab", name="Publish", selected=True).wait_for(timeout=10_000)
    page.wait_for_function(
        f"() => document.querySelector('#publish-source input')?.value === '{name}'", timeout=10_000
    )


def test_the_job_is_listed_again_after_a_reload_and_not_for_another_visitor(page, space_app):
    from playwright.sync_api import expect

    open_app(page, page.url_)  # type: ignore[attr-defined]
    page.get_by_role("tab", name="Train").click()
    jobs = page.locator("#train-jobs")
    expect(jobs).to_contain_text(f"{STEPS}/{STEPS}", timeout=30_000)
    expect(jobs).to_contain_text("done")
    job_id = re.search(r"[0-9a-f]{32}", jobs.inner_text()).group(0)
    browser, url, _ = space_app
    bob = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    open_app(bob, url)
    bob.get_by_role("tab", name="Train").click()
    # The list is filled once the page has its visitor id (kept in the browser's storage).
    bob.wait_for_function("key => window.localStorage.getItem(key)", arg=STORAGE_KEY, timeout=30_000)
    expect(bob.locator("#train-jobs")).not_to_contain_text(job_id)
    expect(bob.locator("#train-jobs")).not_to_contain_text("done")


def test_cancel_then_resume_a_long_run(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Train").click()
    page.locator("#train-zip input[type=file]").set_input_files(str(EXAMPLE))
    page.locator("#train-report").get_by_text("12 images").wait_for(timeout=60_000)
    steps = page.locator("#train-max-train-steps input").first
    steps.fill("2000")
    steps.press("Enter")
    sample_every = page.locator("#train-sample-every input").first  # the zip's 10 would make 400 samples, past the bound
    sample_every.fill("100")
    sample_every.press("Enter")
    page.locator("#train-start").click()
    progress = page.locator("#train-progress")
    expect(progress).to_contain_text("running · step", timeout=60_000)
    page.locator("#train-cancel").click()
    expect(progress).to_contain_text("cancelled", timeout=60_000)
    stopped_at = int(re.search(r"step (\d+) / 2000", progress.inner_text()).group(1))
    assert stopped_at < 2000
    page.locator("#train-resume").click()
    expect(progress).to_contain_text(re.compile(r"(queued|running) · step"), timeout=30_000)
    page.wait_for_function(
        f"() => {{ const m = document.querySelector('#train-progress').innerText.match(/step (\\d+) \\/ 2000/); return m && +m[1] > {stopped_at}; }}",
        timeout=120_000,
    )  # it goes on from where it stopped
    open_app(page, page.url_)  # type: ignore[attr-defined]  # a reload while it runs: the live view comes back
    page.get_by_role("tab", name="Train").click()
    expect(progress).to_contain_text(re.compile(r"running · step \d+ / 2000"), timeout=30_000)
    page.locator("#train-cancel").click()
    expect(progress).to_contain_text("cancelled", timeout=60_000)
    expect(page.locator("#train-jobs")).to_contain_text("cancelled", timeout=30_000)
