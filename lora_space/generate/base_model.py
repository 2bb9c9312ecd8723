"""Load the base pipeline: a Hub id, a local diffusers folder, `tiny` or `tiny-random`.

`load_base_pipeline` is the one function that does it. It fails with a `BaseModelError`
that says what to do (gated repo, no token, no network, not a FLUX pipeline).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FluxPipeline

from lora_space.core.errors import BaseModelError
from lora_space.core.settings import TINY, TINY_RANDOM, Settings
from lora_space.hub.client import HubClient

logger = logging.getLogger(__name__)

# Diffusers-format files of a FLUX repo; the single-file checkpoint at the root is skipped.
DIFFUSERS_PATTERNS = ["model_index.json", "*/*.json", "*/*.safetensors", "*/*.txt", "*/*.model", "*/spiece*"]
FLUX_PIPELINES = {"FluxPipeline"}


@dataclass(frozen=True)
class Device:
    """Where the pipeline runs and in which dtype."""

    name: str
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return f"{self.name} ({str(self.dtype).removeprefix('torch.')})"


def pick_device() -> Device:
    """CUDA in bfloat16 when available (FLUX.1-dev's dtype), else the CPU in float32."""
    if torch.cuda.is_available():
        return Device("cuda", torch.bfloat16)
    return Device("cpu", torch.float32)


def _check_flux_folder(folder: Path) -> None:
    index = folder / "model_index.json"
    if not index.is_file():
        raise BaseModelError(
            f"{folder} has no model_index.json, so it is not a diffusers pipeline folder; "
            "point LORA_SPACE_BASE_MODEL at a folder written by save_pretrained (or use 'tiny')."
        )
    class_name = json.loads(index.read_text()).get("_class_name", "")
    if class_name not in FLUX_PIPELINES:
        raise BaseModelError(
            f"{folder} holds a {class_name or 'unnamed'} pipeline, not a FLUX pipeline; "
            "LoRA Space needs a FLUX.1 base model such as black-forest-labs/FLUX.1-dev."
        )


def _download(repo_id: str, settings: Settings, token: str | None) -> Path:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        folder = HubClient.for_machine(settings, token).snapshot(repo_id, allow_patterns=DIFFUSERS_PATTERNS)
    except GatedRepoError:
        raise BaseModelError(
            f"{repo_id} is gated: accept its licence on its Hub page, then set HF_TOKEN to a token of that account."
        ) from None
    except RepositoryNotFoundError:
        hint = "set HF_TOKEN if it is private" if token is None else "check the id and that your token can read it"
        raise BaseModelError(f"No model {repo_id} on the Hub at {settings.hf_endpoint}; {hint}.") from None
    except LocalEntryNotFoundError:
        raise BaseModelError(
            f"{repo_id} is not in the local cache and the Hub at {settings.hf_endpoint} cannot be reached "
            "(offline or no network); connect, unset HF_HUB_OFFLINE, or use a local folder or 'tiny'."
        ) from None
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", "?")
        raise BaseModelError(f"The Hub refused to send {repo_id} (HTTP {status}); try again later.") from None
    return Path(folder)


def load_base_pipeline(settings: Settings, *, token: str | None = None, device: Device | None = None) -> FluxPipeline:
    """Load the base model named by `settings.base_model` onto `device`.

    Args:
        settings: `base_model` is a Hub id, a local diffusers folder, `tiny` (the drawing tiny
            model, its weights from the repo) or `tiny-random` (random weights, built in memory).
        token: a Hub token for gated or private repos (never logged).
        device: defaults to `pick_device()`.

    Raises:
        BaseModelError: gated repo, no token, no network, or not a FLUX pipeline.
    """
    device = device or pick_device()
    # 1. The tiny models: built in memory from configs (the drawing one with its shipped weights).
    if settings.base_model == TINY:
        from lora_space.tiny.draw import build_drawing_pipeline

        return build_drawing_pipeline(dtype=device.dtype).to(device.name)
    if settings.base_model == TINY_RANDOM:
        from lora_space.tiny.model import build_tiny_pipeline

        return build_tiny_pipeline(dtype=device.dtype).to(device.name)
    # 2. A local folder or a Hub repo, downloaded with progress bars in the log.
    local = Path(settings.base_model)
    folder = local if local.is_dir() else _download(settings.base_model, settings, token)
    _check_flux_folder(folder)
    # 3. Load every component in the device's dtype.
    logger.info("loading %s on %s", settings.base_model, device.label)
    try:
        pipe = FluxPipeline.from_pretrained(folder, dtype=device.dtype)
    except (OSError, ValueError) as error:
        raise BaseModelError(f"{settings.base_model} could not be loaded as a FLUX pipeline: {error}") from None
    return pipe.to(device.name)
