"""The Train tab in a real browser, as the course participant met it (issue 16, item 4): the zip's
config.json shows as the preset "from the zip", a preset asks before it replaces values, each preset
says what it sets, the report's caption checks follow caption edits, the job table keeps up with the
progress bar, and samples say "strength 0" / "strength 1" in full."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.app_process import running_app
from tests.browser import app_page, set_train_field, train_field

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # each test here drives Chromium against the app (`python app.py`)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flat_shapes.zip"
TINY = "tiny quick try"
LOW = "low memory (24 GB card)"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("course-train")
    with running_app(root) as url, app_page(url, root) as page:
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-zip input[type=file]").set_input_files(str(EXAMPLE))
        expect(page.locator("#train-report")).to_contain_text("12 images", timeout=60_000)
        yield page



def choose_preset(page, name: str) -> None:
    page.locator("#train-preset input").first.click()
    page.get_by_role("option", name=name, exact=True).click()


def test_the_zips_settings_show_as_from_the_zip_and_a_preset_asks_before_replacing_them(page):
    preset, ask = page.locator("#train-preset"), page.locator("#train-preset-ask")
    expect(preset.locator("input").first).to_have_value("from the zip")
    expect(preset).to_contain_text("The zip's config.json set")
    expect(train_field(page, "learning-rate")).to_have_value("0.002")  # the zip's, not the tiny preset's 0.001
    # A preset over the zip's values asks first, listing what it would change; keeping changes nothing.
    choose_preset(page, TINY)
    expect(ask).to_be_visible(timeout=10_000)
    expect(ask).to_contain_text("would replace values the form holds (from the zip's config.json)")
    expect(ask).to_contain_text("learning_rate 0.002 → 0.001")
    expect(preset.locator("input").first).to_have_value("from the zip")
    page.locator("#train-preset-keep").click()
    expect(ask).to_be_hidden()
    expect(train_field(page, "learning-rate")).to_have_value("0.002")
    # Replacing applies the preset, and its description says what it set.
    choose_preset(page, TINY)
    page.locator("#train-preset-replace").click()
    expect(train_field(page, "learning-rate")).to_have_value("0.001", timeout=10_000)
    expect(preset.locator("input").first).to_have_value(TINY)
    expect(preset).to_contain_text("Sets: 64 px, 20 steps, rank 4 (alpha 4)")
    # From an untouched preset, another one applies at once: nothing of the user's is lost.
    choose_preset(page, LOW)
    expect(train_field(page, "resolution")).to_have_value("512", timeout=10_000)
    expect(ask).to_be_hidden()
    expect(preset).to_contain_text("the base held in nf4")
    expect(preset).to_contain_text("the base stays unquantised")  # and the field says none: the CPU has no bitsandbytes
    expect(page.locator("#train-quantize-base input").first).to_have_value("none")
    # A value the user changed is asked about too.
    set_train_field(page, "resolution", "256")
    choose_preset(page, TINY)
    expect(ask).to_contain_text("(from the preset low memory (24 GB card), with your changes)", timeout=10_000)
    expect(ask).to_contain_text("resolution 256 → 64")
    page.locator("#train-preset-replace").click()
    expect(train_field(page, "resolution")).to_have_value("64", timeout=10_000)


def test_the_reports_caption_checks_follow_caption_edits(page):
    report = page.locator("#train-report")
    expect(report).not_to_contain_text("missing the trigger word")  # every caption has flatshape_style
    trigger = page.locator("#train-trigger textarea, #train-trigger input").first
    trigger.fill("")
    trigger.press_sequentially("zq_style")  # typed, as a person does (gradio's input event follows key presses)
    expect(report).to_contain_text("Captions missing the trigger word zq_style (use Add trigger word to all) (12)", timeout=10_000)
    page.get_by_role("button", name="Add trigger word to all").click()
    expect(page.locator("#train-captions")).to_contain_text("zq_style, flatshape_style", timeout=10_000)
    expect(report).not_to_contain_text("missing the trigger word", timeout=10_000)


def test_the_job_table_keeps_up_with_the_progress_bar_and_samples_name_their_strength(page):
    steps = 150
    set_train_field(page, "max-train-steps", str(steps))
    set_train_field(page, "sample-every", "0")
    set_train_field(page, "checkpoint-every", "0")
    page.locator("#train-start").click()
    pairs: list[tuple[str, str]] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        bar, row = page.evaluate(
            """() => [document.querySelector('#train-progress')?.innerText || '',
                      document.querySelector('#train-jobs')?.innerText || '']"""
        )  # both read at one moment
        match, cell = re.search(r"(\w+) · step (\d+) / (\d+)", bar), re.search(r"\n(\w+)\s*\n\s*(\d+)/(\d+)\s*\n", row)
        if match and cell:
            pairs.append((match.groups(), cell.groups()))
            if match.group(1) == "done":
                break
        time.sleep(0.2)
    assert pairs and pairs[-1][0] == ("done", str(steps), str(steps)), pairs[-3:]
    running = [(bar, row) for bar, row in pairs if bar[0] == "running" and 0 < int(bar[1]) < steps]
    assert running, "the job ran too fast to be seen between its first and last step"
    behind = [(bar, row) for bar, row in pairs if bar[1] != row[1]]
    # The page renders an update's outputs together; one read may fall between a tick's two writes.
    assert len(behind) <= 2, f"the job table lags the progress bar in {len(behind)} of {len(pairs)} reads: {behind[:3]}"
    captions = page.locator("#train-samples .caption-label")
    expect(captions).to_have_count(2, timeout=30_000)
    texts = captions.all_inner_texts()
    assert [text.split(" · ")[0] for text in texts] == ["strength 0", "strength 1"]
    cut = captions.evaluate_all("labels => labels.filter(label => label.scrollWidth > label.clientWidth + 1).length")
    assert cut == 0, "a sample's caption is cut off"
