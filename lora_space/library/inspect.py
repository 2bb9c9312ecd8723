"""LoRAs and the base by source: the base's shapes, and `/inspect_lora`'s report for what a user types.

`current_base` reads the shapes of the base this app runs (configs only, never weights);
`inspect_source` resolves a library name, a path or a Hub id the way Generate does
(`sources`) and inspects its header (`lora.inspect`): a Hub file by range requests only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lora_space.core.errors import HubError, LoraFileError, LoraSpaceError
from lora_space.core.settings import TINY, Settings
from lora_space.hub.cards import trigger_words_from_card
from lora_space.hub.client import HubClient
from lora_space.library import sources
from lora_space.lora.inspect import InspectReport, inspect_file, inspect_header
from lora_space.lora.safefile import (
    MAX_HEADER_BYTES,
    PICKLE_SUFFIXES,
    check_suffix,
    parse_header,
)
from lora_space.lora.shapes import (
    BASES,
    BaseShapes,
    drawing_shapes,
    folder_configs,
    known_base,
    shapes_from_configs,
    tiny_shapes,
)
from lora_space.visitors.owners import LOCAL, Visitor

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


def inspect_source(
    source: str, *, settings: Settings, token: str | None = None, visitor: Visitor = LOCAL
) -> InspectReport:
    """The `/inspect_lora` report for a library name, a local path, `user/repo` or `user/repo/file`.

    A Hub file is read with range requests (its header only); nothing is downloaded.
    Call `.to_dict()` for the JSON the endpoint returns.

    Raises:
        LoraFileError: nothing by that name, or not a `.safetensors` file.
        UnsafeFileError: a pickle, or a header outside the safety bounds.
        HubError: the Hub cannot give the header (not found, gated, offline).
    """
    # 1. Refuse pickles by name before anything is read.
    source = source.strip()
    if not source:
        raise LoraFileError("Type a LoRA to inspect: a library name, 'user/repo' or 'user/repo/file.safetensors'.")
    if Path(source).suffix.lower() in PICKLE_SUFFIXES:
        check_suffix(source)
    base = current_base(settings, token=token)
    # 2. The library or a local file: the same rules as loading (`sources.resolve_source`).
    #    A path outside the visitor's folders, or missing, gets one answer (`sources.not_found`).
    resolved = sources.resolve_local(source, settings=settings, visitor=visitor)
    if resolved is not None:
        return inspect_file(resolved.file, base=base, source=source, trigger_words=list(resolved.trigger_words))
    # 3. The Hub: the header by range requests, the card for trigger words and training facts,
    #    with the caller's token only (never the Space's own).
    hub = HubClient.for_caller(settings, token)
    repo_id, filename = sources.hub_file(source, hub=hub)
    raw, size = hub.read_header(repo_id, filename, max_header_bytes=MAX_HEADER_BYTES)
    header = parse_header(raw, size, name=f"{repo_id}/{filename}")
    try:
        card = hub.card_data(repo_id)
    except HubError as error:
        logger.info("no model card for %s: %s", repo_id, error)
        card = {}
    report = inspect_header(header, source=source, base=base, trigger_words=trigger_words_from_card(card), card=card)
    logger.info("inspected %s/%s: %s, coverage %.2f", repo_id, filename, report.format, report.coverage)
    return report
