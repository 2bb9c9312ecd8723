"""The shapes of the base model this app runs, read from its configs (never its weights)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lora_space.core.errors import HubError, LoraSpaceError
from lora_space.core.settings import TINY, Settings
from lora_space.hub.client import HubClient
from lora_space.lora.shapes import (
    BASES,
    BaseShapes,
    drawing_shapes,
    folder_configs,
    known_base,
    shapes_from_configs,
    tiny_shapes,
)

logger = logging.getLogger(__name__)


def current_base(settings: Settings, *, token: str | None = None) -> BaseShapes:
    """The shapes of the base model the app runs (`settings.base_model`), without its weights.

    Order: `tiny`; a known Hub id (configs in `base_models.json`); a local diffusers folder;
    another Hub id (its two config files, from the Hub cache that loading the base model filled,
    else downloaded with the caller's `token` or none: never the Space's `HF_TOKEN`). When none
    can be read, FLUX.1-dev stands in and `note` says so.
    """
    if settings.is_tiny:
        return drawing_shapes() if settings.base_model == TINY else tiny_shapes()
    known = known_base(settings.base_model)
    if known is not None:
        return known
    folder = Path(settings.base_model)
    try:
        if folder.is_dir():
            transformer, text_encoder = folder_configs(folder)
        else:
            hub = HubClient.for_caller(settings, token)
            files = {}
            for part in ("transformer", "text_encoder"):
                try:
                    path = hub.download(settings.base_model, f"{part}/config.json", cached_only=True)
                except HubError:  # not cached: from the Hub, as the caller
                    path = hub.download(settings.base_model, f"{part}/config.json")
                files[part] = json.loads(Path(path).read_text())
            transformer, text_encoder = files["transformer"], files["text_encoder"]
        return shapes_from_configs(settings.base_model, transformer, text_encoder)
    except (OSError, ValueError, TypeError, LoraSpaceError) as error:
        logger.warning("could not read the configs of %s: %s", settings.base_model, error)
        fallback = BASES["flux"][0]
        note = f"The configs of {settings.base_model} could not be read; coverage is measured against FLUX.1-dev."
        return shapes_from_configs(fallback["name"], fallback["transformer"], fallback["text_encoder"], note=note)
