"""What Discover's Hub answers hold: `HubModel`, the fields a search asks for, and the Hub LoRAs cached here.

`HubClient.search_loras` is ONE `list_models` request with `expand=EXPAND`: everything a result
shows (counts, licence, card metadata, files) comes in that one answer, with no request per result.
`cached_lora_files` reads the local Hub cache and makes no request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from huggingface_hub import constants, scan_cache_dir
from huggingface_hub.errors import CacheNotFound

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


def hub_model(info: Any) -> HubModel:
    """A search or `model_info` answer as a `HubModel`."""
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
