"""A Space with only SPACE_ID set (no OAuth variables, as a local run or a Space without
`hf_oauth: true`): it runs, anonymously, says so in one line, and names uploads (issue 16, item 7)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.app_process import running_app, write_library
from tests.browser import app_page
from tests.lora_factory import write_lora

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # each test here drives Chromium against the app (`python app.py`)


@pytest.fixture(scope="module")
def space_only(tmp_path_factory):
    root = tmp_path_factory.mktemp("course-space")
    write_library(root / "loras")
    write_lora(root / "upload" / "detailed_eyes.safetensors", 12)
    with running_app(root, SPACE_ID="someone/lora-space", HF_TOKEN="") as url, app_page(url, root) as page:
        yield page


def test_a_space_without_oauth_starts_says_so_in_one_line_and_names_uploads(space_only):
    page = space_only
    log = (page.root / "app.log").read_text()  # type: ignore[attr-defined]
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "Sign-in with Hugging Face is off" in line]
    assert len(lines) == 1 and "OAUTH_CLIENT_ID" in lines[0] and "hf_oauth: true" in lines[0]
    expect(page.locator("#sign-in-off")).to_contain_text("Sign-in with Hugging Face is off")
    page.get_by_role("tab", name="Generate").click()
    heading = page.locator("#library").get_by_text(re.compile("^Library"))
    expect(heading).to_have_text("Library: this Space's LoRAs (shared, read-only) and yours")
    # A shared name is refused; the name field beside the upload gives the file another one.
    page.locator("#library-upload input[type=file]").set_input_files(str(page.root / "upload" / "detailed_eyes.safetensors"))  # type: ignore[attr-defined]
    expect(page.get_by_text("choose another name for yours").first).to_be_visible(timeout=30_000)
    name = page.locator("#library-upload-name textarea, #library-upload-name input").first
    name.fill("my_eyes")
    name.press("Enter")
    expect(page.locator("#library-upload-status")).to_contain_text("Added my_eyes to your library", timeout=30_000)
    expect(page.locator("#library-table")).to_contain_text("my_eyes")
