"""Start `python app.py` as a user does (a subprocess on a free port) for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LORA_NAMES = ["wtrclr_style", "detailed_eyes", "film_look", "neon"]  # the library write_library makes
REPO = Path(__file__).resolve().parents[1]
START_SECONDS = 120  # a generous bound: the app starts in about 20 s on an idle 2-core machine
# As on a Space: SPACE_ID set, and the OAuth variables the Space would provide (never used: no one logs in).
SPACE_ENV = {
    "SPACE_ID": "lora-space/test",
    "SYSTEM": "spaces",  # gradio's own test for a Space
    "OAUTH_CLIENT_ID": "test-client",
    "OAUTH_CLIENT_SECRET": "test-secret",
    "OAUTH_SCOPES": "openid profile read-repos write-repos manage-repos",
    "OPENID_PROVIDER_URL": "http://127.0.0.1:9",
}
PROCESSES: dict[str, subprocess.Popen] = {}  # url -> the running app, for tests that read its /proc (memory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(root: Path, **env: str) -> Iterator[str]:
    """Run the app in tiny-random mode (`LORA_SPACE_BASE_MODEL=tiny` in `env` for the drawing
    model) with its library and data under `root`; yields its URL.

    Fails if it does not answer within START_SECONDS.
    """
    port = free_port()
    environment = os.environ | {
        "LORA_SPACE_BASE_MODEL": "tiny-random",
        "LORA_SPACE_DATA_DIR": str(root / "data"),
        "LORA_SPACE_LORA_DIR": str(root / "loras"),
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
    } | env
    log_path = root / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if process.poll() is not None:
                        raise RuntimeError(f"the app exited:\n{log_path.read_text()}") from None
                    if time.monotonic() - started > START_SECONDS:
                        raise RuntimeError(f"the app did not answer within {START_SECONDS} s:\n{log_path.read_text()}") from None
                    time.sleep(0.25)
            url = f"http://127.0.0.1:{port}/"
            PROCESSES[url] = process
            yield url
        finally:
            PROCESSES.pop(f"http://127.0.0.1:{port}/", None)
            process.terminate()
            process.wait(timeout=30)


def write_library(folder: Path) -> None:
    """A library of four LoRAs (LORA_NAMES; `wtrclr_style` with its trigger word) and a broken file."""
    from tests.lora_factory import write_lora

    for seed, name in enumerate(LORA_NAMES):
        write_lora(folder / f"{name}.safetensors", seed)
    (folder / "wtrclr_style.txt").write_text("wtrclr")
    (folder / "broken.safetensors").write_bytes(b"\x80\x04not a safetensors file")


@contextmanager
def running_app_on_hub(root: Path, hub_endpoint: str) -> Iterator[str]:
    """`running_app` with the example library and the Hub stand-in at `hub_endpoint` (no token, its own cache)."""
    write_library(root / "loras")
    environment = {"HF_ENDPOINT": hub_endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "HF_HUB_CACHE": str(root / "hf-cache")}
    with running_app(root, **environment) as url:
        yield url
