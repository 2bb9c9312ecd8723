"""`/inspect_lora`'s report for what a user types.

`inspect_source` resolves a library name, a path or a Hub id the way Generate does
(`sources`) and inspects its header (`lora.inspect`): a Hub file by range requests only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lora_space.core.errors import HubError, LoraFileError
from lora_space.core.settings import Settings
from lora_space.hub.cards import trigger_words_from_card
from lora_space.hub.client import HubClient
from lora_space.library import sources
from lora_space.library.base import current_base
from lora_space.lora.inspect import InspectReport, inspect_file, inspect_header
from lora_space.lora.safefile import (
    MAX_HEADER_BYTES,
    PICKLE_SUFFIXES,
    check_suffix,
    parse_header,
)
from lora_space.visitors.owners import LOCAL, Visitor

logger = logging.getLogger(__name__)


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
