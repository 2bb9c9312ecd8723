"""Hub calls for Discover: search LoRAs, read a repo's facts and card, list the Hub LoRAs cached here.

Part of the Hub layer (with `hub.py`; `hub_http.py` holds their error translation and ranged reads): every
`HfApi` call of Discover is here, and each returns dataclasses. A search is ONE `list_models`
request with `expand=[...]`: everything a result shows (counts, licence, card metadata, files)
comes in that one answer, with no request per result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, scan_cache_dir
from huggingface_hub.errors import CacheNotFound

from . import hub_http
from .hub_http import base_url, caller_token, hub_errors, ranged_reader, require_online

logger = logging.getLogger(__name__)

SORTS = {"downloads": "downloads", "likes": "likes", "trending": "trending_score", "recent": "last_modified"}
"""The API's sort names -> `list_models`'s (the Hub always sorts descending)."""
MAX_RESULTS = 1000
"""The most results one search request asks for (the Hub's largest page)."""
EXPAND = ["author", "downloads", "likes", "trendingScore", "lastModified", "tags", "cardData", "siblings", "gated", "private", "sha"]
MAX_CARD_BYTES = 32 * 1024
"""A model card is read with one ranged request of at most this many bytes (most cards are under
10 kB; this also bounds the work of rendering a hostile one: markdown-it is quadratic on some inputs)."""


@dataclass(frozen=True)
class HubModel:
    """A model repo as a search or `model_info` answer describes it.

    Attributes:
        repo_id: `user/repo`.
        author: the repo's namespace.
        downloads: downloads in the last 30 days.
        likes: likes.
        trending_score: the Hub's trending score.
        last_modified: the last commit's time, or None.
        tags: the repo's tags (with the Hub's `base_model:...` and `license:...` tags).
        card_data: the YAML metadata of the model card (empty without one).
        files: the repo's file names.
        gated: False, or "auto"/"manual" when downloads need an accepted licence.
        private: visible only to its owners.
        sha: the head commit.
    """

    repo_id: str
    author: str
    downloads: int = 0
    likes: int = 0
    trending_score: int = 0
    last_modified: datetime | None = None
    tags: tuple[str, ...] = ()
    card_data: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    gated: bool | str = False
    private: bool = False
    sha: str | None = None


@dataclass(frozen=True)
class CachedHubFile:
    """A `.safetensors` file of a model repo in the local Hub cache (latest cached revision)."""

    repo_id: str
    filename: str
    path: Path
    size_bytes: int
    revision: str


def _model(info: Any) -> HubModel:
    card = info.card_data.to_dict() if info.card_data is not None else {}
    return HubModel(
        repo_id=info.id,
        author=info.author or info.id.split("/")[0],
        downloads=info.downloads or 0,
        likes=info.likes or 0,
        trending_score=info.trending_score or 0,
        last_modified=info.last_modified,
        tags=tuple(info.tags or ()),
        card_data=card,
        files=tuple(sibling.rfilename for sibling in info.siblings or ()),
        gated=info.gated or False,
        private=bool(info.private),
        sha=info.sha,
    )


def search_loras(
    base_model: str,
    *,
    endpoint: str,
    query: str = "",
    sort: str = "downloads",
    limit: int = 24,
    token: str | bool | None = None,
    offline: bool = False,
) -> list[HubModel]:
    """The first `limit` LoRAs for `base_model` on the Hub, best first: ONE request.

    A LoRA for a base model carries the tags `lora` and `base_model:adapter:<base_model>`
    (the Hub derives the second from the card's `base_model`).

    Args:
        base_model: the Hub id the LoRAs must be made for.
        endpoint: the Hub.
        query: free text matched against repo ids ("" for all).
        sort: `downloads`, `likes`, `trending` or `recent` (last modified).
        limit: how many results, 1 to `MAX_RESULTS`.
        token: the caller's token (`False`: none).
        offline: refuse before sending anything.

    Raises:
        HubError: offline, unreachable, rate-limited (429), or the Hub refuses.
        ValueError: an unknown sort or a limit out of range (checked by the caller's layer first).
    """
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}")
    if not 1 <= limit <= MAX_RESULTS:
        raise ValueError(f"limit {limit} is outside 1..{MAX_RESULTS}")
    require_online(offline, endpoint, "search for LoRAs")
    api = HfApi(endpoint=base_url(endpoint), token=caller_token(token))
    with hub_errors(endpoint):
        found = api.list_models(
            filter=["lora", f"base_model:adapter:{base_model}"],
            search=query.strip() or None,
            sort=SORTS[sort],  # type: ignore[arg-type]
            limit=limit,  # one page of `limit` results: list_models stops there
            expand=EXPAND,  # type: ignore[arg-type]
        )
        return [_model(info) for info in found]


def model_details(
    repo_id: str, *, endpoint: str, token: str | bool | None = None, offline: bool = False
) -> HubModel:
    """One repo's facts (the same fields as a search result), in one `model_info` request.

    Raises:
        HubError: not found, private, offline, unreachable.
    """
    require_online(offline, endpoint, f"read {repo_id}")
    with hub_errors(endpoint, repo_id=repo_id):
        info = HfApi(endpoint=base_url(endpoint), token=caller_token(token)).model_info(repo_id, expand=EXPAND, timeout=hub_http.TIMEOUT_S)  # type: ignore[arg-type]
    return _model(info)


def read_text_file(
    repo_id: str,
    filename: str,
    *,
    endpoint: str,
    token: str | bool | None = None,
    revision: str | None = None,
    offline: bool = False,
    max_bytes: int = MAX_CARD_BYTES,
) -> tuple[str, bool]:
    """A text file of a repo (a model card) by ONE ranged read of its first `max_bytes` bytes.

    Returns:
        The text (undecodable bytes replaced) and whether it was cut at `max_bytes`.

    Raises:
        HubError: not found, gated, offline, unreachable.
    """
    require_online(offline, endpoint, f"read {repo_id}/{filename}")
    body, total = ranged_reader(repo_id, filename, endpoint=endpoint, token=token, revision=revision)(0, max_bytes - 1)
    return body.decode("utf-8", errors="replace"), total > max_bytes


def cached_lora_files(*, exclude: Sequence[str] = (), max_bytes: int | None = None) -> list[CachedHubFile]:
    """The `.safetensors` files of model repos in the local Hub cache (`HF_HUB_CACHE`), no Hub call.

    Only each repo's most recently cached revision counts; repos in `exclude` (the base model)
    and files above `max_bytes` are left out.
    """
    try:
        cache = scan_cache_dir(constants.HF_HUB_CACHE)
    except (CacheNotFound, OSError) as error:
        logger.debug("no Hub cache to list: %s", type(error).__name__)
        return []
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model" or repo.repo_id in exclude or not repo.revisions:
            continue
        revision = max(repo.revisions, key=lambda item: item.last_modified)
        for file in revision.files:
            name = file.file_path.relative_to(revision.snapshot_path).as_posix()
            if name.lower().endswith(".safetensors") and (max_bytes is None or file.size_on_disk <= max_bytes):
                found.append(CachedHubFile(repo.repo_id, name, file.file_path, file.size_on_disk, revision.commit_hash))
    return sorted(found, key=lambda item: (item.repo_id.casefold(), item.filename))
