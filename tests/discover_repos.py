"""LoRA repos on the Hub stand-in for the Discover tests: the cases a search and an evaluation meet."""

from __future__ import annotations

import functools
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import save

from tests.hub_standin import HubStandIn
from tests.lora_factory import lora_tensors

FLUX = "black-forest-labs/FLUX.1-dev"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
GATED_USER, GATED_TOKEN = "gina", "hf_gina_reads_gated"
SCRIPT_MARK = "pwned_by_card"


@pytest.fixture
def instant_retries(monkeypatch):
    """huggingface_hub retries a search 5 times with 1-8 s waits on 429/5xx/no connection; skip the waits."""
    from huggingface_hub.utils import _http

    waits: list[float] = []
    monkeypatch.setattr(_http.time, "sleep", waits.append)
    return waits


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def _lora_bytes(seed: int, metadata: tuple[tuple[str, str], ...]) -> bytes:
    return save(lora_tensors(seed), metadata=dict(metadata) or None)


def lora_bytes(folder: Path, name: str, seed: int, metadata: dict[str, str] | None = None) -> bytes:
    """A real tiny-model LoRA file (built once per test run for each seed and metadata)."""
    return _lora_bytes(seed, tuple(sorted((metadata or {}).items())))


def card(front: str, body: str = "") -> str:
    return f"---\n{front.strip()}\n---\n\n{body}\n"


def add_discover_repos(hub: HubStandIn, folder: Path) -> dict[str, str]:
    """Six LoRA repos for FLUX.1-dev and one for SDXL; returns their ids by role."""
    now = datetime.now(UTC)
    hub.add_user(GATED_USER, token=GATED_TOKEN, role="read")
    hub.add_model(
        "alice/watercolor-flux",
        files={
            "README.md": card(
                f"""
base_model: {FLUX}
license: apache-2.0
tags: [lora, flux, text-to-image]
instance_prompt: wtrclr
widget:
  - text: wtrclr, a lighthouse at dawn
    output:
      url: images/preview.png
""",
                "# Watercolor\n\nSoft washes. ![sample](images/preview.png)",
            ),
            "watercolor-flux.safetensors": lora_bytes(folder, "watercolor", 1),
            "images/preview.png": png_bytes((200, 120, 40)),
        },
        downloads=5000, likes=80, trending_score=5, last_modified=now - timedelta(days=30),
    )
    hub.add_model(
        "bob/several-files",
        files={
            "README.md": card(
                f"""
base_model: {FLUX}
license: cc-by-nc-4.0
tags: [lora]
widget:
  - text: bobstyle, a cat on a sofa
  - text: a dog in the snow, bobstyle
""",
                "Load it with `pipe.load_lora_weights('bob/several-files', weight_name='chosen.safetensors')`.",
            ),
            "pytorch_lora_weights.safetensors": lora_bytes(folder, "bob_main", 2),
            "chosen.safetensors": lora_bytes(folder, "bob_chosen", 3, metadata={"trigger_words": "bobword"}),
            "checkpoints/step-100.safetensors": lora_bytes(folder, "bob_step", 4),
        },
        downloads=300, likes=3, trending_score=50, last_modified=now - timedelta(days=1),
    )
    hub.add_model(
        "carol/pickle-only",
        files={"README.md": card(f"base_model: {FLUX}\ntags: [lora]\nlicense: mit"), "lora.bin": b"\x80\x04not really a pickle"},
        downloads=900, likes=1, last_modified=now - timedelta(days=5),
    )
    hub.add_model(
        "dave/gated-lora",
        files={
            "README.md": card(f"base_model: {FLUX}\ntags: [lora]\nlicense: other\nlicense_name: flux-1-dev-non-commercial-license\ninstance_prompt: gtd"),
            "gated-lora.safetensors": lora_bytes(folder, "gated", 5),
        },
        gated="manual", downloads=1200, likes=10, last_modified=now - timedelta(days=10),
    )
    hub.grant_access("dave/gated-lora", GATED_USER)
    hub.add_model(
        "mallory/html-card",
        files={
            "README.md": card(
                f"base_model: {FLUX}\ntags: [lora]",
                "# Nice LoRA\n\n"
                f"<script>document.title = '{SCRIPT_MARK}'; window.{SCRIPT_MARK} = true;</script>\n\n"
                '<div align="center"><img src="https://evil.example/track.png" onerror="alert(1)">'
                '<img src="images/ok.png" alt="ok"></div>\n\n'
                "Click [here](javascript:alert(1)) or <a href=\"javascript:alert(2)\">there</a>. "
                "<b onclick=\"alert(3)\">bold</b> ![tracker](https://evil.example/pixel.gif)\n",
            ),
            "html-card.safetensors": lora_bytes(folder, "html", 6),
            "images/ok.png": png_bytes((10, 200, 10)),
        },
        downloads=20, likes=0, last_modified=now - timedelta(days=2),
    )
    hub.add_model(
        "erin/sdxl-lora",
        files={"README.md": card(f"base_model: {SDXL}\ntags: [lora]\nlicense: mit"),
               "sdxl-lora.safetensors": lora_bytes(folder, "sdxl", 7)},
        downloads=99999, likes=999, last_modified=now,
    )
    hub.add_model(
        "frank/no-card",
        files={"no-card.safetensors": lora_bytes(folder, "nocard", 8)},
        tags=["lora", f"base_model:adapter:{FLUX}"], downloads=0, likes=0, last_modified=now - timedelta(days=100),
    )
    return {
        "card": "alice/watercolor-flux", "several": "bob/several-files", "pickle": "carol/pickle-only",
        "gated": "dave/gated-lora", "html": "mallory/html-card", "other_base": "erin/sdxl-lora", "no_card": "frank/no-card",
    }


WIDE = "zed/wide-lora"


def add_wide_repo(hub: HubStandIn) -> str:
    """A FLUX.1-dev LoRA repo whose file fits no module of tiny (its inputs are 64 wide, tiny's 32),
    under the file name diffusers' trainers write; returns its id."""
    tensors = {
        key: (value.new_zeros(value.shape[0], 2 * value.shape[1]) if ".lora_A." in key else value)
        for key, value in lora_tensors(13).items()
    }
    hub.add_model(
        WIDE,
        files={
            "README.md": card(f"base_model: {FLUX}\ntags: [lora]\nlicense: mit", "# Wide"),
            "pytorch_lora_weights.safetensors": save(tensors),
        },
        downloads=10, likes=1,
    )
    return WIDE
