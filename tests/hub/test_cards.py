"""Card images (issue 14, hole 5): a card's images are Hub URLs checked and rebuilt from their parts,
and showing them never makes the server fetch one (Gradio's Gallery fetches an `.svg` URL on the server)."""

from __future__ import annotations

import gradio as gr
import gradio.processing_utils
import pytest
from PIL import Image

from lora_space.core.settings import Settings
from lora_space.discover.finder import Discover
from lora_space.hub.cards import hub_image_url
from tests.hub_standin import isolated_hub, safetensors_bytes

FLUX = "black-forest-labs/FLUX.1-dev"


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
        settings = Settings.from_env({"LORA_SPACE_BASE_MODEL": "tiny-random", "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"),
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


