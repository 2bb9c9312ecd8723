"""`/publish` from gradio_client against the running app (`python app.py`) and the Hub stand-in."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from lora_space.publish.card import parse_card
from tests.app_process import running_app
from tests.hub_standin import isolated_hub
from tests.lora_factory import write_lora

pytestmark = pytest.mark.slow  # each test here starts the app (`python app.py`)

TOKEN = "hf_alice_WRITE_token_api_5e4d3c2b1a"
READ_TOKEN = "hf_alice_READ_token_api_1a2b3c4d"


def test_publish_from_gradio_client_with_oauth_token(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as hub:
        hub.add_user("alice", token=TOKEN)
        hub.add_user("alice", token=READ_TOKEN, role="read")
        write_lora(tmp_path / "loras" / "ink.safetensors", 1)
        (tmp_path / "loras" / "ink.txt").write_text("inkstyle")
        with running_app(tmp_path, HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", HF_TOKEN="") as url:
            client = Client(url, oauth_token=TOKEN, verbose=False)
            made = client.predict(
                prompt="a harbour <lora:ink:0.8>", seed=3, steps=2, width=64, height=64, api_name="/generate"
            )
            result = client.predict(
                lora="ink",
                repo_id="alice/ink-flux",
                sample_images=[handle_file(made["images"][0])],
                extra_formats=["comfyui"],
                api_name="/publish",
            )
            # Refusals reach the script as AppError with the reason.
            with pytest.raises(AppError, match="read-only"):
                Client(url, oauth_token=READ_TOKEN, verbose=False).predict(
                    lora="ink", repo_id="alice/other", api_name="/publish"
                )
            with pytest.raises(AppError, match="already exists"):
                client.predict(lora="ink", repo_id="alice/ink-flux", api_name="/publish")
            with pytest.raises(AppError, match="HF_TOKEN"):  # no login, and no HF_TOKEN on this machine
                Client(url, verbose=False).predict(lora="ink", repo_id="alice/other", api_name="/publish")
        log = (tmp_path / "app.log").read_text()
        endpoint = hub.endpoint

    assert result["url"] == f"{endpoint}/alice/ink-flux"
    (commit,) = hub.commits["alice/ink-flux"]
    assert result["commit"] == commit.oid
    assert sorted(result["files"]) == sorted(commit.files) == sorted([
        "README.md", "images/sample_01.png", "ink-flux-comfyui.safetensors",
        "pytorch_lora_weights.safetensors", "reproducibility.json",
    ])
    card = parse_card(commit.files["README.md"].decode())
    assert card["widget"] == [{"text": "inkstyle, a harbour", "output": {"url": "images/sample_01.png"}}]
    # In tiny mode a LoRA of the tiny model claims no FLUX.1 base; the script is told why.
    assert "base_model" not in card and "lora-space-tiny" in card["tags"]
    assert len(result["notes"]) == 1 and "test artefact" in result["notes"][0]
    assert not hub.commits.get("alice/other")
    assert TOKEN not in log and READ_TOKEN not in log
