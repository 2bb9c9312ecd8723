"""The README's tour in a real browser (issue 16, "done when"): Discover, Generate with two library
LoRAs on, train the example zip in tiny mode, *Try in Generate*, generate with it, publish it to the
Hub stand-in, and come back to Generate: the new LoRA sits in a visible slot that is switched on.

Screenshots of each tab go to `$COURSE_SCREENS` when set (else the test's temporary folder)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.app_process import running_app_on_hub
from tests.browser import app_page, pick, set_train_field
from tests.discover_repos import add_discover_repos
from tests.hub_standin import HubStandIn

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # each test here drives Chromium against the app (`python app.py`)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flat_shapes.zip"
TOKEN = "hf_tour_alice_token_5e6f7a8b9c"
STEPS = 6


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("tour-hub")
    with HubStandIn(root=root / "hub") as stand_in:
        add_discover_repos(stand_in, root / "files")
        stand_in.add_user("alice", token=TOKEN)
        yield stand_in


@pytest.fixture(scope="module")
def page(tmp_path_factory, hub):
    root = tmp_path_factory.mktemp("tour-app")
    with running_app_on_hub(root, hub.endpoint) as url, app_page(url, root) as page:
        yield page


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("COURSE_SCREENS") or tmp_path_factory.mktemp("screens"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_tour_ends_with_the_new_lora_in_a_visible_active_slot(page, hub, screens):
    # 1. Discover: a search of the stand-in's LoRAs.
    page.get_by_role("tab", name="Discover").click()
    page.locator("#discover-search").click()
    expect(page.locator("#discover-status")).to_contain_text("LoRAs on page 1", timeout=30_000)
    page.locator("#discover-open-box textarea, #discover-open-box input").first.fill("alice/watercolor-flux")
    page.locator("#discover-open").click()
    expect(page.locator("#discover-inspection")).to_contain_text("rank", timeout=30_000)  # the header's summary, as text
    page.screenshot(path=str(screens / "course-discover.png"), full_page=True)
    # 2. Generate with two library LoRAs on: the visible slots are taken.
    page.get_by_role("tab", name="Generate").click()
    pick(page, "LoRA 1", "wtrclr_style")
    pick(page, "LoRA 2", "neon")
    # 3. Train the example zip (its config.json fills the form), a few steps.
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-zip input[type=file]").set_input_files(str(EXAMPLE))
    expect(page.locator("#train-report")).to_contain_text("12 images", timeout=60_000)
    expect(page.locator("#train-preset input").first).to_have_value("from the zip")
    set_train_field(page, "max-train-steps", str(STEPS))
    set_train_field(page, "lr-warmup-steps", "0")  # the zip's warm-up (10 steps) is longer than this run
    page.locator("#train-start").click()
    expect(page.locator("#train-progress")).to_contain_text(f"done · step {STEPS} / {STEPS}", timeout=300_000)
    expect(page.locator("#train-jobs")).to_contain_text(f"{STEPS}/{STEPS}")  # the job table agrees with the bar
    expect(page.locator("#train-samples .caption-label").first).to_contain_text("strength", timeout=30_000)
    page.screenshot(path=str(screens / "course-train.png"), full_page=True)
    name = page.locator("#train-lora-name textarea, #train-lora-name input").first.input_value()
    assert name.startswith("flatshape_style_")
    # 4. Try in Generate: the first free slot, opened and said, and an image with it.
    page.locator("#train-try").click()
    expect(page.get_by_role("tab", name="Generate", selected=True)).to_be_visible(timeout=10_000)
    note = page.locator("#slot-note")
    expect(note).to_contain_text(re.compile(rf"{name} is in LoRA slot 3 \(the group LoRA 3-6, now open\)"), timeout=10_000)
    page.locator("#slot-solo").click()  # the lesson's advice: try a new LoRA alone first
    expect(note).to_contain_text(f"Only {name} is on now")
    page.locator("#prompt textarea").fill("flatshape_style, a flat red circle")
    page.locator("#generate-button").click()
    expect(page.locator("#gallery img").first).to_be_visible(timeout=120_000)
    expect(page.locator("#recipe")).to_contain_text(name)
    page.screenshot(path=str(screens / "course-generate.png"), full_page=True)
    # 5. Publish it to the stand-in with Alice's token: honestly a tiny-mode test artefact.
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-publish").click()
    expect(page.get_by_role("tab", name="Publish", selected=True)).to_be_visible(timeout=10_000)
    expect(page.locator("#publish-source input").first).to_have_value(name)
    page.locator("#publish-repo textarea, #publish-repo input").first.fill("alice/flat-shapes-tour")
    page.locator("#publish-render").click()
    expect(page.locator("#publish-card-view")).to_contain_text("flatshape_style", timeout=60_000)
    page.locator("#publish-token input").fill(TOKEN)
    page.locator("#publish-rights input").check()
    page.locator("#publish-send").click()
    expect(page.locator("#publish-status")).to_contain_text("Published:", timeout=120_000)
    page.screenshot(path=str(screens / "course-publish.png"), full_page=True)
    readme = hub.file_bytes("alice/flat-shapes-tour", "README.md").decode()
    assert "black-forest-labs/FLUX.1-dev" not in readme.split("---")[1]  # the card's metadata claims no FLUX.1 base
    # 6. Back on Generate: the new LoRA in a visible slot, switched on; the others off.
    page.get_by_role("tab", name="Generate").click()
    slot = page.locator("input[aria-label='LoRA 3']")
    expect(slot).to_be_visible()
    expect(slot).to_have_value(name)
    switches = page.get_by_role("checkbox", name="on")
    expect(switches.nth(2)).to_be_visible()
    expect(switches.nth(2)).to_be_checked()
    expect(switches.nth(0)).not_to_be_checked()
    slot.scroll_into_view_if_needed()
    page.screenshot(path=str(screens / "course-generate-slot.png"), full_page=True)
