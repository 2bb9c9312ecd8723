"""The app as a user starts it: `python app.py` on a free port, called with gradio_client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client

REPO = Path(__file__).resolve().parents[1]
START_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """`python app.py` in tiny mode, as the README starts it; yields its URL."""
    root = tmp_path_factory.mktemp("app")
    port = free_port()
    env = os.environ | {
        "LORA_SPACE_BASE_MODEL": "tiny",
        "LORA_SPACE_DATA_DIR": str(root / "data"),
        "LORA_SPACE_LORA_DIR": str(root / "loras"),
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
    }
    log = open(root / "app.log", "w")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    started = time.monotonic()
    try:
        while time.monotonic() - started < START_SECONDS:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert process.poll() is None, (root / "app.log").read_text()
                time.sleep(0.25)
        else:
            pytest.fail(f"the app did not answer within {START_SECONDS} s:\n{(root / 'app.log').read_text()}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_app_answers_and_lists_its_endpoints(app_url):
    client = Client(app_url, verbose=False)
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in ("/list_loras", "/generate"):
        assert name in endpoints
    assert client.predict(api_name="/list_loras") == []


def test_generate_returns_a_png_with_its_recipe(app_url):
    from PIL import Image

    client = Client(app_url, verbose=False)
    result = client.predict(prompt="a red fox", seed=7, steps=2, width=64, height=64, api_name="/generate")
    assert result["metadata"]["seed"] == 7
    (image_path,) = result["images"]
    image = Image.open(image_path)
    assert image.size == (64, 64)
    assert "Seed: 7" in image.info["parameters"]


def test_bad_input_is_an_app_error_that_says_how_to_fix_it(app_url):
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False)
    with pytest.raises(AppError, match="multiple of 16"):
        client.predict(prompt="x", steps=2, width=65, height=64, api_name="/generate")
