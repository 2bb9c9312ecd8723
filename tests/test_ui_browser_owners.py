"""Who owns what, in a real browser on a Space: a visitor's upload is theirs alone, also after a reload."""

from __future__ import annotations

import pytest

from tests.app_process import SPACE_ENV, running_app
from tests.browser import chromium
from tests.lora_factory import write_lora
from tests.test_app import write_library



@pytest.fixture(scope="module")
def space_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    write_library(root / "loras")
    write_lora(root / "upload" / "alices_style.safetensors", 11)
    write_lora(root / "upload" / "detailed_eyes.safetensors", 12)
    with running_app(root, **SPACE_ENV) as url, chromium() as browser:
        yield browser, url, root


def open_generate(context, url):
    page = context.new_page()
    page.goto(url, wait_until="load")  # not "networkidle": gradio keeps a heartbeat open while the app has a gr.State
    page.locator("#header").wait_for()
    page.get_by_role("tab", name="Generate").click()
    return page


def library_text(page) -> str:
    page.get_by_role("button", name="Refresh").click()
    page.wait_for_timeout(1500)
    return page.locator("#library-table").inner_text()


def test_an_upload_is_the_visitors_own(space_app):
    browser, url, root = space_app
    alice_context, bob_context = (browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(2))  # two visitors, two localStorages
    alice = open_generate(alice_context, url)
    # 1. Alice uploads a LoRA: it joins her library, not the shared one.
    alice.locator("#library-upload input[type=file]").set_input_files(str(root / "upload" / "alices_style.safetensors"))
    alice.get_by_text("Added alices_style to your library").wait_for(timeout=30_000)
    assert not (root / "loras" / "alices_style.safetensors").exists()
    assert "alices_style" in library_text(alice)
    # 2. A shared name is refused, and the shared file is untouched.
    shared_before = (root / "loras" / "detailed_eyes.safetensors").read_bytes()
    alice.locator("#library-upload input[type=file]").set_input_files(str(root / "upload" / "detailed_eyes.safetensors"))
    alice.get_by_text("shared library already has a LoRA named 'detailed_eyes'").first.wait_for(timeout=30_000)
    assert (root / "loras" / "detailed_eyes.safetensors").read_bytes() == shared_before
    # 3. Bob neither sees it nor can use it.
    bob = open_generate(bob_context, url)
    assert "alices_style" not in library_text(bob) and "wtrclr_style" in library_text(bob)
    bob.locator("#prompt textarea").fill("a lighthouse <lora:alices_style:0.8>")
    bob.locator("#generate-button").click()
    bob.get_by_text("No LoRA named 'alices_style'").first.wait_for(timeout=30_000)
    # 4. Alice still has it after a reload (the browser keeps her id).
    alice.reload(wait_until="load")
    alice.locator("#header").wait_for()
    alice.get_by_role("tab", name="Generate").click()
    assert "alices_style" in library_text(alice)
    alice.locator("#prompt textarea").fill("a lighthouse <lora:alices_style:0.8>")
    alice.locator("#generate-button").click()
    alice.locator("#gallery img").first.wait_for(timeout=60_000)
    alice.screenshot(path=str(root / "owners.png"))
