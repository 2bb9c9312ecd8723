"""The Publish tab in a real browser: render the card, edit it, confirm the rights, publish to the stand-in."""

from __future__ import annotations

import pytest

from lora_space.publish.card import parse_card
from tests.app_process import running_app, write_library
from tests.browser import app_page
from tests.hub_standin import HubStandIn

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # each test here drives Chromium against the app (`python app.py`)

TOKEN = "hf_alice_browser_token_77aa66bb55cc"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubStandIn(root=tmp_path_factory.mktemp("hub")) as stand_in:
        stand_in.add_user("alice", token=TOKEN)
        yield stand_in


@pytest.fixture(scope="module")
def page(tmp_path_factory, hub):
    root = tmp_path_factory.mktemp("browser-publish")
    write_library(root / "loras")
    with running_app(root, HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", HF_TOKEN="") as url, app_page(url, root) as page:
        yield page


def test_render_edit_and_publish_a_library_lora(page, hub):
    page.get_by_role("tab", name="Publish").click()
    page.locator("#publish-source input").fill("wtrclr_style")
    page.locator("#publish-source input").press("Enter")
    page.locator("#publish-repo textarea, #publish-repo input").first.fill("alice/wtrclr-flux")
    page.locator("#publish-render").click()
    page.locator("#publish-card").get_by_text("instance_prompt: wtrclr").wait_for(timeout=30_000)
    page.locator("#publish-card-view").get_by_text("Use wtrclr in the prompt").wait_for(timeout=10_000)
    # The card is editable before it is sent.
    editor = page.locator("#publish-card .cm-content")
    editor.click()
    page.keyboard.press("Control+End")
    page.keyboard.type("\nEdited by hand before publishing.\n")
    page.locator("#publish-token input").fill(TOKEN)
    # Without the rights statement ticked, nothing is sent.
    page.locator("#publish-send").click()
    page.get_by_text("hold the rights to the training images before publishing").first.wait_for(timeout=30_000)
    assert not hub.commits
    page.locator("#publish-rights input").check()
    page.locator("#publish-send").click()
    page.locator("#publish-status").get_by_text("Published:").wait_for(timeout=60_000)
    page.screenshot(path=str(page.root / "publish.png"))  # type: ignore[attr-defined]

    (commit,) = hub.commits["alice/wtrclr-flux"]
    readme = commit.files["README.md"].decode()
    assert readme.rstrip().endswith("Edited by hand before publishing.")
    assert parse_card(readme)["instance_prompt"] == "wtrclr"
    assert page.locator("#publish-status a").get_attribute("href") == f"{hub.endpoint}/alice/wtrclr-flux"
    assert TOKEN not in (page.root / "app.log").read_text()  # type: ignore[attr-defined]
