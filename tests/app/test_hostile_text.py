"""Hostile text against the running app (issue 14, holes 1 and 6).

- Hole 1: a PNG whose `parameters` text is 60,000 characters, given to `/publish`, is answered
  within 10 s, and other calls are answered within 5 s meanwhile (the parse of such a text held the
  GIL for minutes; a million characters, for hours).
- Hole 6: a LoRA whose metadata, trigger words and tensor names hold HTML and Markdown shows them
  as text in the LoRA tools panel, in Chromium: no `<img>`, no `<a>`.
Holes 5 and 11 are in tests/hub/test_cards.py and tests/hub/test_client.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from playwright.sync_api import expect
from safetensors.torch import save_file

from tests.app_process import running_app
from tests.browser import app_page
from tests.hub_standin import isolated_hub
from tests.lora_factory import lora_tensors, write_lora

pytestmark = pytest.mark.slow  # each test here starts the app (`python app.py`)

TOKEN = "hf_alice_WRITE_token_text_7a6b5c4d3e"
TRACKER = "http://127.0.0.1:9/track.png"
HOSTILE = f'<img src="{TRACKER}"> [claim your prize](https://evil.example/login) ![t](https://evil.example/t.png)'


# -- hole 1 and hole 6: the running app ------------------------------------------------------------


def hostile_lora(path: Path) -> Path:
    """A LoRA for tiny whose metadata, trigger words and one module name hold HTML and Markdown."""
    tensors = lora_tensors(3)
    odd = "transformer.transformer_blocks.0.<img src=x>[a](https://evil.example)"
    tensors[f"{odd}.lora_A.weight"] = torch.zeros(4, 8)
    tensors[f"{odd}.lora_B.weight"] = torch.zeros(8, 4)
    metadata = {"ss_optimizer": HOSTILE, "ss_sd_model_name": "https://evil.example/phish", "trigger_words": "ok, x` <img src=x> `y"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app (tiny, SPACE_ID unset) on a free port, with a plain and a hostile LoRA, and a Hub stand-in."""
    root = tmp_path_factory.mktemp("hardening-text")
    write_lora(root / "loras" / "ink.safetensors", 1)
    hostile_lora(root / "loras" / "hostile.safetensors")
    monkeypatch = pytest.MonkeyPatch()
    try:
        with isolated_hub(root, monkeypatch) as hub:
            hub.add_user("alice", token=TOKEN)
            env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "HF_HOME": str(root / "hf-home")}
            with running_app(root, **env) as url:
                yield url, root, hub
    finally:
        monkeypatch.undo()


@pytest.mark.timeout(120)
def test_a_sixty_thousand_character_recipe_is_answered_at_once_and_the_app_keeps_answering(app):
    url, root, hub = app
    info = PngInfo()
    info.add_text("parameters", "a" + " " * 59_998 + ",")  # the worst line for A1111's pattern: minutes of GIL
    sample = root / "hostile-recipe.png"
    Image.new("RGB", (64, 64), "blue").save(sample, pnginfo=info)
    publisher, other = Client(url, oauth_token=TOKEN, verbose=False), Client(url, verbose=False)
    started = time.monotonic()
    job = publisher.submit(lora="ink", repo_id="alice/hostile", sample_images=[handle_file(str(sample))], api_name="/publish")
    waits = []
    while not job.done() and time.monotonic() - started < 10:
        asked = time.monotonic()
        names = [item["name"] for item in other.predict(api_name="/list_loras")]
        waits.append(time.monotonic() - asked)
        assert "ink" in names
    result = job.result(timeout=max(10 - (time.monotonic() - started), 0.1))
    assert time.monotonic() - started < 10
    assert max(waits, default=0) < 5, waits
    # The sample is published as a picture; its hostile text is not (it is refused as a recipe).
    assert "images/sample_01.png" in result["files"]
    assert [commit.oid for commit in hub.commits["alice/hostile"]] == [result["commit"]]
    assert b"tEXtparameters" not in hub.file_bytes("alice/hostile", "images/sample_01.png")


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_the_lora_tools_panel_shows_metadata_names_and_words_as_text(app):
    url, root, _ = app
    with app_page(url, root) as page:
        page.get_by_role("tab", name="Generate").click(timeout=60_000)
        page.get_by_text("LoRA tools: inspect, convert, resize, compare").click()
        page.locator("#tools-inspect-source textarea, #tools-inspect-source input").first.fill("hostile")
        page.locator("#tools-inspect").click()
        summary = page.locator("#tools-inspect-summary")
        summary.get_by_text("LoRA, rank").wait_for(timeout=60_000)
        text = summary.inner_text()
        expect(summary.locator("img")).to_have_count(0)
        expect(summary.locator("a")).to_have_count(0)
        assert HOSTILE in text  # shown as written
        assert "https://evil.example/phish" in text and "x` <img src=x> `y" in text
        assert "<img src=x>[a](https://evil.example)" in text  # a module name, in a warning
        page.screenshot(path=str(root / "lora-tools-hostile.png"))


