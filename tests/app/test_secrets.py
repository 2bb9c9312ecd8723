"""Hardening against the running app (`python app.py`, tiny) and the Hub stand-in: files and secrets.

- Files: `/gradio_api/file=` serves the app's outputs, and nothing else (system files, encoded
  variants, the library, the data folder's secret, paths that climb out of an allowed folder).
- Secrets: with fake `hf_` tokens in use, no error, file or image carries one, and visitor A's
  token is never sent for visitor B's request (the stand-in records whose token each request
  carried). No log line holds one: tests/service/test_service.py (in process).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from tests.app_process import running_app
from tests.hub_standin import HubStandIn
from tests.lora_factory import write_lora

pytestmark = pytest.mark.slow  # each test here starts the app (`python app.py`)

TOKEN_A = "hf_aliceSECRETtokenAAAAAAAAAAAAAAAA01"
TOKEN_B = "hf_bobSECRETtokenBBBBBBBBBBBBBBBBBB02"
CARD = "---\nbase_model: black-forest-labs/FLUX.1-dev\ninstance_prompt: privstl\n---\n"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app on a free port, a library of one LoRA, and a stand-in Hub with alice's private LoRA."""
    root = tmp_path_factory.mktemp("hardening-app")
    write_lora(root / "loras" / "ink.safetensors", 1)
    with HubStandIn(root=root / "hub") as hub:
        hub.add_user("alice", token=TOKEN_A)
        hub.add_user("bob", token=TOKEN_B)
        hub.add_model("alice/private-style", files={"style.safetensors": write_lora(root / "made" / "p.safetensors", 2), "README.md": CARD}, private=True)
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "HF_HOME": str(root / "hf-home"),
               "HF_HUB_CACHE": str(root / "hf-cache"), "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}
        with running_app(root, **env) as url:
            yield url, root, hub


def get(url: str, path: str) -> httpx.Response:
    return httpx.get(url.rstrip("/") + path, timeout=30, follow_redirects=False)


def test_the_file_route_serves_outputs_and_nothing_else(app):
    url, root, _ = app
    made = Client(url, verbose=False).predict(prompt="a cat", seed=1, steps=2, width=64, height=64, api_name="/generate")
    assert Image.open(made["images"][0]).size == (64, 64)  # an output of this app: served
    served = max((root / "data" / "outputs").rglob(Path(made["images"][0]).name), key=lambda file: file.stat().st_mtime)
    response = get(url, "/gradio_api/file=" + str(served.resolve()))
    assert response.status_code == 200 and response.content == served.read_bytes()  # the route, as the client uses it
    library_file = (root / "loras" / "ink.safetensors").resolve()
    data = (root / "data").resolve()
    secret_file = data / ".visitor_secret"
    targets = [
        "/etc/passwd",
        quote("/etc/passwd", safe=""),
        quote(quote("/etc/passwd", safe=""), safe=""),
        "/etc/../etc/passwd",
        "//etc/passwd",
        "../../../../../../etc/passwd",
        quote("../../../../../../etc/passwd", safe=""),
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        str(library_file),
        str(secret_file),
        str(data / "outputs" / ".." / ".visitor_secret"),
        str(data / "outputs" / ".." / ".." / "loras" / "ink.safetensors"),
        "/proc/self/environ",
        "/tmp/gradio/../../etc/passwd",
    ]
    for target in targets:
        for route in ("/gradio_api/file=", "/file="):
            response = get(url, route + target)
            assert response.status_code in (400, 403, 404), (route, target, response.status_code)
            assert b"root:" not in response.content and b"HF_ENDPOINT" not in response.content


def test_tokens_never_leave_their_request_and_never_show(app):
    url, root, hub = app
    alice = Client(url, oauth_token=TOKEN_A, verbose=False)
    bob = Client(url, oauth_token=TOKEN_B, verbose=False)
    hub.reset_log()
    made = alice.predict(prompt="a cat", loras=[{"source": "alice/private-style", "strength": 0.8}], seed=1, steps=2, width=64, height=64, api_name="/generate")
    assert made["metadata"]["prompt"] == "privstl, a cat"
    report = alice.predict(source="alice/private-style", api_name="/inspect_lora")
    assert report["trigger_words"] == ["privstl"]
    assert {request.user for request in hub.requests} == {"alice"}
    # Bob (another token) and an anonymous script reach the Hub as themselves, so alice's
    # private LoRA, now in the app's Hub cache, stays hers.
    errors = []
    for client, who in ((bob, "bob"), (Client(url, verbose=False), None)):
        hub.reset_log()
        for call in (
            lambda: client.predict(prompt="a cat", loras=[{"source": "alice/private-style", "strength": 0.8}], seed=1, steps=2, width=64, height=64, api_name="/generate"),
            lambda: client.predict(source="alice/private-style", api_name="/inspect_lora"),
            lambda: client.predict(sources=["alice/private-style", "ink"], api_name="/compare_loras"),
        ):
            with pytest.raises(AppError) as caught:
                call()
            errors.append(str(caught.value))
        assert hub.requests and {request.user for request in hub.requests} == {who}
    # No token anywhere: errors, the app's log, any file it wrote, the images' metadata.
    for text in errors + [(root / "app.log").read_text()]:
        assert TOKEN_A not in text and TOKEN_B not in text
    for file in root.rglob("*"):
        if file.is_file() and not file.is_relative_to(root / "hub"):
            content = file.read_bytes()
            assert TOKEN_A.encode() not in content and TOKEN_B.encode() not in content, file
    image = Image.open(made["images"][0])
    assert not any(TOKEN_A in str(value) for value in image.info.values())
