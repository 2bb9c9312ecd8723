"""Optional captions written by a vision-language model (transformers' `image-text-to-text`).

Loaded only when a user asks for it, and loaded per call (a captioning model is not kept in
memory beside FLUX). The model comes from the Hub (`presets.json` -> `autocaption`); where the
Hub cannot be reached the call fails with a `DatasetError` that says so and what to do, and
everything else keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from lora_space.core.errors import DatasetError, HubError
from lora_space.hub.client import HubClient
from lora_space.train.dataset import add_trigger_word
from lora_space.train.presets import load_presets

OFFLINE_FIX = (
    "Write the captions in the table yourself, or run the app where the Hub is reachable "
    "(or download the model first: `hf download {model}`)."
)


def autocaption(
    images: Mapping[str, str | Path],
    *,
    trigger_word: str = "",
    model: str | None = None,
    endpoint: str = "https://huggingface.co",
    offline: bool = False,
    device: str | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, str]:
    """Caption each image with a vision-language model.

    Args:
        images: image name -> path of its normalised PNG (`IngestedDataset.dataset` rows).
        trigger_word: put in front of each caption (as "add trigger word to all" does).
        model: a Hub id of an `image-text-to-text` model (default: `presets.json`'s).
        endpoint: the Hub (`Settings.hf_endpoint`); one quick look-up there comes before the
            download, so an unreachable Hub fails in seconds rather than after the download's retries.
        offline: `HF_HUB_OFFLINE` is set: fail at once with the fix, without trying the network.
        device: where the model runs (None: CUDA when available, else the CPU).
        progress: called with (fraction done, text) after each image.

    Returns:
        image name -> caption.

    Raises:
        DatasetError: the model cannot be loaded (offline, not found) or fails on an image.
    """
    settings = load_presets()["autocaption"]
    model = model or settings["model"]
    if offline:
        raise DatasetError(f"Auto-captioning needs the model {model} from the Hub, and the app runs offline (HF_HUB_OFFLINE). " + OFFLINE_FIX.format(model=model))
    try:
        if not HubClient(endpoint).repo_exists(model):
            raise DatasetError(f"Auto-captioning: the model {model} is not on the Hub at {endpoint}. " + OFFLINE_FIX.format(model=model))
    except HubError as error:
        raise DatasetError(f"Auto-captioning needs the model {model} from the Hub, which cannot be reached ({error}). " + OFFLINE_FIX.format(model=model)) from None
    pipe = _load(model, device)
    captions = {}
    for index, (name, path) in enumerate(images.items()):
        from PIL import Image

        with Image.open(path) as image:
            output = pipe(image.convert("RGB"), text=settings["prompt"], max_new_tokens=settings["max_new_tokens"])
        text = output[0]["generated_text"] if output and isinstance(output[0], dict) else str(output)
        captions[name] = " ".join(str(text).split())
        if progress is not None:
            progress((index + 1) / len(images), f"captioned {name}")
    return add_trigger_word(captions, trigger_word)


def _load(model: str, device: str | None):
    """The transformers pipeline, imported and built only here."""
    try:
        import torch
        from transformers import pipeline

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return pipeline("image-text-to-text", model=model, device=device, token=False)  # a visitor's call: never the Space's HF_TOKEN
    except (OSError, ValueError, ImportError) as error:
        raise DatasetError(
            f"Auto-captioning could not load the model {model} ({type(error).__name__}: the Hub is unreachable or the model is missing). "
            + OFFLINE_FIX.format(model=model)
        ) from None
