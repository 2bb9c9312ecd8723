"""Hardening against hostile text and URLs from images, files and the Hub (issue 14, holes 1, 5, 6, 11).

- Hole 1 against the running app: a PNG whose `parameters` text is 60,000 characters, given to
  `/publish`, is answered within 10 s, and other calls are answered within 5 s meanwhile (the
  parse of such a text held the GIL for minutes; a million characters, for hours).
- Hole 5: a card's images are Hub URLs checked and rebuilt from their parts, and showing them
  never makes the server fetch one (Gradio's Gallery fetches an `.svg` URL on the server).
- Hole 6: a LoRA whose metadata, trigger words and tensor names hold HTML and Markdown shows them
  as text in the LoRA tools panel, in Chromium: no `<img>`, no `<a>`.
- Hole 11: with the Space's `HF_TOKEN` set, a visitor's Hub reads carry no token at all (the
  stand-in records whose token each request carried).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr
import gradio.processing_utils
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file

from lora_space import hub as hub_calls
from lora_space import hub_search
from lora_space.card_render import hub_image_url
from lora_space.discover import Discover
from lora_space.lora.inspect import inspect_source
from lora_space.lora.shapes import current_base
from lora_space.settings import Settings
from tests.app_process import running_app
from tests.browser import app_page
from tests.hub_standin import isolated_hub, safetensors_bytes
from tests.lora_factory import lora_tensors, write_lora

TOKEN = "hf_alice_WRITE_token_text_7a6b5c4d3e"
SPACE_TOKEN = "hf_space_OWNER_token_text_0f1e2d3c4b"
FLUX = "black-forest-labs/FLUX.1-dev"
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
        assert summary.locator("img").count() == 0 and summary.locator("a").count() == 0, summary.inner_html()
        assert HOSTILE in text  # shown as written
        assert "https://evil.example/phish" in text and "x` <img src=x> `y" in text
        assert "<img src=x>[a](https://evil.example)" in text  # a module name, in a warning
        page.screenshot(path=str(root / "lora-tools-hostile.png"))


# -- hole 5: card images -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src",
    [
        "http://evil\\@huggingface.co/x.png",  # Python: the Hub; Chromium: evil
        "http://evil%5C@huggingface.co/x.png",
        "https://user:pass@huggingface.co/x.png",
        "https://huggingface.co/alice/pics/resolve/main/x.png?x=.svg",  # Gradio's Gallery fetches "*.svg" on the server
        "images/x.png?x=.svg",
        "https://huggingface.co/x.png#.svg",
        "https://huggingface.co/x.svg",
        "https://huggingface.co\t.evil.example/x.png",
        "https://hugg\u0131ngface.co/x.png",
        "https://huggingface.co:8443/x.png",
        "//evil.example/x.png",
        "https://evil.example/huggingface.co/x.png",
        "../../etc/x.png",
    ],
)
def test_card_image_urls_that_browsers_and_python_read_differently_are_refused(src):
    assert hub_image_url(src, repo_id="alice/pics", endpoint="https://huggingface.co") is None


def test_card_image_urls_are_rebuilt_from_their_checked_parts():
    def url(src: str) -> str | None:
        return hub_image_url(src, repo_id="alice/pics", endpoint="https://huggingface.co")

    assert url("HTTPS://HuggingFace.CO/alice/pics/blob/main/a%20b.png") == "https://huggingface.co/alice/pics/resolve/main/a%20b.png"
    assert url("https://cdn-lfs.huggingface.co/x/../y.webp") == "https://cdn-lfs.huggingface.co/y.webp"
    assert url("images/a b.jpg") == "https://huggingface.co/alice/pics/resolve/main/images/a%20b.jpg"
    assert url("/alice/pics/resolve/main/c.gif") == "https://huggingface.co/alice/pics/resolve/main/c.gif"


def test_showing_a_cards_images_never_makes_the_server_fetch_them(tmp_path, monkeypatch):
    """The gallery gets Hub URLs the browser loads; before, `x.png?x=.svg` passed the check and
    Gradio's Gallery downloaded it on the server (any size) to inline it as an SVG."""
    with isolated_hub(tmp_path, monkeypatch) as hub:
        # The stand-in plays huggingface.co, the host Gradio's server-side fetches trust.
        monkeypatch.setattr(gradio.processing_utils, "PUBLIC_HOSTNAME_WHITELIST", [*gradio.processing_utils.PUBLIC_HOSTNAME_WHITELIST, "127.0.0.1"])
        big = f"{hub.endpoint}/mallory/pics/resolve/main/big.png"
        readme = (
            f"---\nbase_model: {FLUX}\ntags: [lora]\nwidget:\n- text: a cat\n  output:\n    url: {big}?x=.svg\n---\n"
            f'# Pics\n\n<img src="{big}?.svg">\n\n![x]({big}#.svg) ![y](http://evil\\@{hub.endpoint.removeprefix("http://")}/mallory/pics/resolve/main/big.png)\n'
            "![ok](images/ok.png)\n"
        )
        picture = Image.new("RGB", (8, 8), "green")
        png = tmp_path / "ok.png"
        picture.save(png)
        hub.add_model("mallory/pics", files={"README.md": readme, "big.png": png, "images/ok.png": png,
                                             "pics.safetensors": safetensors_bytes()}, tags=["lora", f"base_model:adapter:{FLUX}"])
        settings = Settings.from_env({"LORA_SPACE_BASE_MODEL": "tiny", "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"),
                                      "LORA_SPACE_DATA_DIR": str(tmp_path / "data"), "HF_ENDPOINT": hub.endpoint})
        discover = Discover(settings)
        evaluation = discover.evaluate("mallory/pics")
        found = discover.search()
        hub.reset_log()
        shown = [url for url in evaluation.card.images] + [item.preview_url for item in found if item.preview_url]
        gallery = gr.Gallery().postprocess([(url, "") for url in shown])
        assert [item.image.url for item in gallery.root] == shown  # links for the browser to load
        assert all(item.image.path == item.image.url for item in gallery.root)  # no file on this server
        assert not hub.requests, hub.requests  # the server fetched nothing
        assert evaluation.card.images == [f"{hub.endpoint}/mallory/pics/resolve/main/images/ok.png"]
    assert evaluation.card.dropped_images == 4  # the widget's, the <img>'s and both Markdown images
    assert [item.preview_url for item in found] == [big]  # the widget's image refused: the repo's first image


# -- hole 11: a visitor's Hub reads never carry the Space's token -------------------------------


def test_the_spaces_hf_token_is_never_sent_for_a_visitors_read(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as hub:
        hub.add_user("space-owner", token=SPACE_TOKEN)
        monkeypatch.setenv("HF_TOKEN", SPACE_TOKEN)  # the Space's own token, for its base model only
        flux = json.loads((Path(__file__).resolve().parents[1] / "lora_space" / "lora" / "base_models.json").read_text())["flux"][0]
        hub.add_model("acme/flux-variant", files={"transformer/config.json": json.dumps(flux["transformer"]),
                                                  "text_encoder/config.json": json.dumps(flux["text_encoder"]),
                                                  "README.md": "---\nlicense: other\n---\n"})
        lora = write_lora(tmp_path / "made" / "style.safetensors", 4)
        hub.add_model("alice/style", files={"style.safetensors": lora, "README.md": "---\ninstance_prompt: stl\n---\n"})
        settings = Settings.from_env({"LORA_SPACE_BASE_MODEL": "acme/flux-variant", "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"),
                                      "LORA_SPACE_DATA_DIR": str(tmp_path / "data"), "HF_ENDPOINT": hub.endpoint})
        endpoint = hub.endpoint
        hub.reset_log()
        # The read the issue found (lora/shapes.py): the base's configs, for a visitor without a login.
        assert current_base(settings, token=None).name == "acme/flux-variant"
        report = inspect_source("alice/style", settings=settings, token=None)
        assert report.trigger_words == ["stl"] and not [warning for warning in report.warnings if "could not be read" in warning]
        # Every read of the Hub layer, called with no token.
        hub_calls.read_safetensors_header("alice/style", "style.safetensors", endpoint=endpoint, token=None)
        hub_calls.download_file("alice/style", "style.safetensors", endpoint=endpoint, token=None, max_bytes=2**20)
        hub_calls.repo_commit("alice/style", endpoint=endpoint, token=None)
        hub_calls.model_card_data("alice/style", endpoint=endpoint, token=None)
        hub_calls.pick_weight_file("alice/style", endpoint=endpoint, token=None)
        assert hub_calls.repo_exists("alice/style", endpoint=endpoint, token=None)
        hub_search.search_loras(FLUX, endpoint=endpoint, token=None)
        hub_search.model_details("alice/style", endpoint=endpoint, token=None)
        hub_search.read_text_file("alice/style", "README.md", endpoint=endpoint, token=None)
        requests = hub.requests
    assert len(requests) >= 12 and {request.path for request in requests} >= {
        "/acme/flux-variant/resolve/main/transformer/config.json", "/api/models/alice/style", "/api/models",
    }
    assert {request.user for request in requests} == {None}, [(r.path, r.user) for r in requests if r.user]
