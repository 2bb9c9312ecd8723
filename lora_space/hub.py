"""Every Hub call the app makes.

Each function takes the Hub endpoint explicitly and builds its own `HfApi(endpoint=..., token=...)`:
huggingface_hub reads `HF_ENDPOINT` only once, at import. Every call is made for a user and
sends that user's token, or none: `token=None` means no token here (`hub_http.caller_token`),
never huggingface_hub's default (`HF_TOKEN`, the Space's own, which only loads the base model,
in `base_model`). With
`offline=True` a call refuses with a `HubError` before sending anything (`download_file` reads
the local cache instead).

huggingface_hub errors become `HubError`s whose message says what is wrong and what to do;
files that cannot be used become `LoraFileError`s. No message ever holds a token.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

from . import hub_http
from .errors import HubError, LoraFileError, UnsafeFileError
from .hub_http import base_url, caller_token, hub_errors, ranged_reader, require_online
from .lora import safefile
from .prompts import clean_trigger_words

logger = logging.getLogger(__name__)

HEADER_PROBE_END = 100_000
"""Last byte of the first ranged read of a safetensors file (100,001 bytes, as huggingface_hub reads)."""
MAX_HEADER_BYTES = safefile.MAX_HEADER_BYTES  # one set of bounds: the one safetensors reader's
CANONICAL_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DOWNLOADABLE_SUFFIXES = frozenset({".safetensors", ".json", ".txt", ".md", ".png", ".jpg", ".jpeg", ".webp", ".gif"})
PICKLE_SUFFIXES = safefile.PICKLE_SUFFIXES
TRIGGER_KEYS = ("instance_prompt", "trigger_words", "trigger_word", "trigger")


def read_safetensors_header(
    repo_id: str,
    filename: str,
    *,
    endpoint: str,
    token: str | bool | None = None,
    revision: str | None = None,
    offline: bool = False,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> tuple[bytes, int]:
    """Read the JSON header of a safetensors file on the Hub without downloading the file.

    One ranged GET of the first 100,001 bytes covers the 8-byte length and the header of usual
    files; a second ranged GET fetches the rest of a longer header. A declared header length above
    `max_header_bytes` is refused before it is fetched. A server that ignores `Range` is read
    only as far as needed.

    Returns:
        The raw header bytes (without the 8-byte length prefix) and the file's total size.

    Raises:
        HubError: the Hub cannot be reached or refuses (offline, not found, gated, unauthorised).
        LoraFileError: the file is not a safetensors file (too small, truncated);
            `UnsafeFileError` when its header length breaks `max_header_bytes`.
    """
    where = f"{repo_id}/{filename}"
    require_online(offline, endpoint, f"read {where}")
    if not filename.lower().endswith(".safetensors"):
        raise LoraFileError(f"{where} is not a .safetensors file; LoRA Space reads only safetensors LoRAs.")
    read = ranged_reader(repo_id, filename, endpoint=endpoint, token=caller_token(token), revision=revision)
    first, total = read(0, HEADER_PROBE_END)
    if len(first) < 8:
        raise LoraFileError(f"{where} is only {total} bytes long: too small to be a safetensors file.")
    if len(first) >= 9:  # pickles, zips and impossible lengths, as the one reader tells them
        safefile.header_length(first[:9], total, name=where)
    (header_length,) = struct.unpack("<Q", first[:8])
    if header_length > max_header_bytes:
        raise UnsafeFileError(
            f"{where} declares a {header_length}-byte header, above the {max_header_bytes}-byte limit: "
            "it is not a usable safetensors file."
        )
    if 8 + header_length > total:
        raise LoraFileError(f"{where} is truncated or not a safetensors file: its header runs past its end.")
    header = first[8 : 8 + header_length]
    if len(header) < header_length:
        rest, _ = read(len(first), 8 + header_length - 1)
        header += rest
    if len(header) != header_length:
        raise HubError(f"The Hub at {base_url(endpoint)} sent a short answer for {where}; try again.")
    return header, total


def is_cached(repo_id: str, filename: str, *, revision: str | None = None, cache_dir: Path | None = None) -> bool:
    """Whether the Hub cache already holds this file at this revision (no request is made)."""
    return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision), str)


def download_file(
    repo_id: str,
    filename: str,
    *,
    endpoint: str,
    token: str | bool | None = None,
    revision: str | None = None,
    cache_dir: Path | None = None,
    offline: bool = False,
    max_bytes: int | None = None,
) -> Path:
    """Download one file of a model repo into the Hub cache and return its local path.

    Only `.safetensors` weights and harmless companions (README/Markdown, JSON, text, images) are
    fetched: the app never loads pickled weights. Offline, the file comes from the local cache.
    With `max_bytes`, a file not yet cached is measured first (one HEAD request) and refused
    above it; pass a commit sha as `revision` so that what was measured is what is fetched.

    Raises:
        UnsafeFileError: a pickle-format file (`.bin`, `.pt`, `.ckpt`, ...).
        LoraFileError: any other file type.
        HubError: the Hub cannot be reached or refuses; offline and not in the cache.
    """
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"{repo_id}/{filename} is a pickle-format file, which can run code when loaded; "
            "LoRA Space loads only .safetensors weights: pick the repo's .safetensors file."
        )
    if suffix not in DOWNLOADABLE_SUFFIXES:
        raise LoraFileError(
            f"{repo_id}/{filename} is not a file LoRA Space downloads: it fetches .safetensors weights "
            "and README, JSON, text or image files only."
        )
    with hub_errors(endpoint, repo_id=repo_id, filename=filename, revision=revision):
        if max_bytes is not None and not offline and not is_cached(repo_id, filename, cache_dir=cache_dir, revision=revision):
            url = hf_hub_url(repo_id, filename, revision=revision, endpoint=base_url(endpoint))
            size = get_hf_file_metadata(url, token=caller_token(token), timeout=hub_http.TIMEOUT_S, endpoint=base_url(endpoint)).size
            if size is None or size > max_bytes:
                raise LoraFileError(
                    f"{repo_id}/{filename} is {(size or 0) / 2**30:.1f} GiB, above the {max_bytes / 2**30:.1f} GiB "
                    "this Space downloads; pick a smaller file."
                )
        try:
            path = hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                endpoint=base_url(endpoint),
                token=caller_token(token),
                cache_dir=cache_dir,
                local_files_only=offline,
            )
        except LocalEntryNotFoundError:
            if not offline:
                raise
            raise HubError(
                f"{repo_id}/{filename} is not in the local cache and the app is offline (HF_HUB_OFFLINE is set); "
                "download it once while online, or unset HF_HUB_OFFLINE."
            ) from None
    return Path(path)


def list_lora_weight_files(
    repo_id: str,
    *,
    endpoint: str,
    token: str | bool | None = None,
    revision: str | None = None,
    offline: bool = False,
) -> list[tuple[str, int]]:
    """The `.safetensors` files of a model repo with their sizes in bytes, in the Hub's order."""
    require_online(offline, endpoint, f"list the files of {repo_id}")
    with hub_errors(endpoint, repo_id=repo_id, revision=revision):
        info = HfApi(endpoint=base_url(endpoint), token=caller_token(token)).model_info(
            repo_id, revision=revision, files_metadata=True, timeout=hub_http.TIMEOUT_S
        )
    return [
        (sibling.rfilename, sibling.size or 0)
        for sibling in info.siblings or []
        if sibling.rfilename.lower().endswith(".safetensors")
    ]


def pick_weight_file(
    repo_id: str,
    files: Sequence[tuple[str, int]] | None = None,
    *,
    endpoint: str | None = None,
    token: str | bool | None = None,
    offline: bool = False,
    revision: str | None = None,
) -> str:
    """Choose the main LoRA file among a repo's `(name, size)` files.

    `files` is what `list_lora_weight_files` returns; without it, the files are listed from the
    Hub at `endpoint` (with `token` and `offline` as there).

    The rule, first match wins:
    1. only `.safetensors` files count, and files at the repo root beat files in folders
       (intermediate checkpoints, samples);
    2. `pytorch_lora_weights.safetensors`, the name diffusers saves under;
    3. a file named after the repo (`alice/watercolor-lora` -> `Watercolor_LoRA.safetensors`;
       case, `-`, `_` and `.` are ignored);
    4. the largest file; equal sizes go to the shortest name, then the first alphabetically, so
       that `style.safetensors` beats the epoch checkpoint `style-000004.safetensors`.

    Raises:
        LoraFileError: the repo has no `.safetensors` file.
        HubError: listing the files failed (see `list_lora_weight_files`).
    """
    if files is None:
        if endpoint is None:
            raise TypeError("pick_weight_file needs the repo's files or the Hub endpoint to list them")
        files = list_lora_weight_files(repo_id, endpoint=endpoint, token=token, offline=offline, revision=revision)
    candidates = [(name, size) for name, size in files if name.lower().endswith(".safetensors")]
    if not candidates:
        raise LoraFileError(f"{repo_id} has no .safetensors file; LoRA Space loads only safetensors LoRAs.")
    candidates = [item for item in candidates if "/" not in item[0]] or candidates
    repo_name = _normalised(repo_id.split("/")[-1])

    def rank(item: tuple[str, int]) -> tuple[bool, bool, int, int, str]:
        name, size = item
        base = PurePosixPath(name)
        return (base.name != CANONICAL_WEIGHT_NAME, _normalised(base.stem) != repo_name, -size, len(name), name)

    return min(candidates, key=rank)[0]


def repo_commit(
    repo_id: str,
    *,
    endpoint: str,
    token: str | bool | None = None,
    offline: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The repo's current commit sha and its model card's metadata, in one call.

    Pass the sha as `revision` to every later read of the repo (size check, file list, download),
    so that they all see the same files even if the repo changes meanwhile.
    """
    require_online(offline, endpoint, f"look up {repo_id}")
    with hub_errors(endpoint, repo_id=repo_id):
        info = HfApi(endpoint=base_url(endpoint), token=caller_token(token)).model_info(repo_id, expand=["sha", "cardData"], timeout=hub_http.TIMEOUT_S)
    if not info.sha:
        raise HubError(f"The Hub at {base_url(endpoint)} did not say which commit {repo_id} is at; try again later.")
    return info.sha, info.card_data.to_dict() if info.card_data is not None else {}


def model_card_data(
    repo_id: str,
    *,
    endpoint: str,
    token: str | bool | None = None,
    offline: bool = False,
) -> dict[str, Any]:
    """The YAML metadata of a repo's model card (the Hub's `cardData`); empty without a card."""
    require_online(offline, endpoint, f"read the model card of {repo_id}")
    with hub_errors(endpoint, repo_id=repo_id):
        info = HfApi(endpoint=base_url(endpoint), token=caller_token(token)).model_info(repo_id, expand=["cardData"], timeout=hub_http.TIMEOUT_S)
    return info.card_data.to_dict() if info.card_data is not None else {}


def trigger_words_from_card(card_data: Mapping[str, Any]) -> list[str]:
    """The trigger words a model card declares, in order, without duplicates.

    Read from `instance_prompt` (diffusers' training scripts), then `trigger_words`,
    `trigger_word` and `trigger`; each may be a string or a list of strings, and a string holding
    commas gives one word per part, kept as `prompts.clean_trigger_words` keeps them. Widget
    prompts are examples, not trigger words.
    """
    words: list[str] = []
    for key in TRIGGER_KEYS:
        value = card_data.get(key)
        items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for item in items:
            if isinstance(item, str):
                words += item.split(",")
    return clean_trigger_words(words)


def whoami(token: str | None, *, endpoint: str, offline: bool = False) -> dict[str, Any]:
    """Who the token belongs to: the Hub's `whoami-v2` answer (`name`, `orgs`, `auth`, ...).

    Raises:
        HubError: no token (never falls back to the machine's own login), offline, or the Hub
            refuses the token.
    """
    if not token:
        raise HubError("Log in with your Hugging Face account first: this needs your Hub token.")
    require_online(offline, endpoint, "check your login")
    with hub_errors(endpoint):
        return HfApi(endpoint=base_url(endpoint)).whoami(token=token)



@dataclass(frozen=True)
class CreatedRepo:
    """A model repo made by `create_repo`: its id and its page on the Hub."""

    repo_id: str
    url: str


@dataclass(frozen=True)
class Commit:
    """A commit made by `create_commit`: the repo, the commit id and its page on the Hub."""

    repo_id: str
    oid: str
    url: str


def _write_token(token: str | None, action: str) -> str:
    if not token:
        raise HubError(f"Log in with your Hugging Face account first: {action} needs your Hub token.")
    return token


def repo_exists(repo_id: str, *, endpoint: str, token: str | None, offline: bool = False) -> bool:
    """Whether the model repo `repo_id` exists and `token` can see it (a gated repo exists)."""
    require_online(offline, endpoint, f"look up {repo_id}")
    with hub_errors(endpoint, repo_id=repo_id):
        return HfApi(endpoint=base_url(endpoint)).repo_exists(repo_id, token=caller_token(token))


def create_repo(repo_id: str, *, endpoint: str, token: str | None, private: bool = True, offline: bool = False) -> CreatedRepo:
    """Create the model repo `repo_id` with the user's `token` (never the machine's login).

    Raises:
        HubError: no token, offline, the repo exists already, or the Hub refuses (no write access).
    """
    token = _write_token(token, f"creating {repo_id}")
    require_online(offline, endpoint, f"create {repo_id}")
    with hub_errors(endpoint, repo_id=repo_id):
        try:
            url = HfApi(endpoint=base_url(endpoint)).create_repo(repo_id, token=token, private=private, exist_ok=False)
        except HfHubHTTPError as error:
            if error.response.status_code != 409:
                raise
            raise HubError(f"{repo_id} already exists on the Hub; choose another name.") from None
    return CreatedRepo(repo_id=url.repo_id or repo_id, url=str(url))


def create_commit(
    repo_id: str,
    files: Mapping[str, Path | bytes],
    *,
    endpoint: str,
    token: str | None,
    message: str,
    description: str = "",
    offline: bool = False,
) -> Commit:
    """Add `files` (path in the repo -> local file or bytes) to `repo_id` in one commit.

    One `create_commit` call: the Hub applies all files or none.

    Raises:
        HubError: no token, offline, or the Hub refuses (no write access, invalid card YAML).
    """
    token = _write_token(token, f"committing to {repo_id}")
    require_online(offline, endpoint, f"commit to {repo_id}")
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(content) if isinstance(content, Path) else content)
        for path, content in files.items()
    ]
    with hub_errors(endpoint, repo_id=repo_id):
        try:
            info = HfApi(endpoint=base_url(endpoint)).create_commit(
                repo_id, operations, commit_message=message, commit_description=description or None, token=token
            )
        except (HFValidationError, HfHubHTTPError):
            raise
        except ValueError as error:  # the Hub's /api/validate-yaml refused README.md
            raise HubError(f"The Hub refused the model card (README.md): {error}; fix its YAML block.") from None
    return Commit(repo_id=repo_id, oid=info.oid, url=info.commit_url)


def delete_repo(repo_id: str, *, endpoint: str, token: str | None, offline: bool = False) -> None:
    """Delete the model repo `repo_id` (used to undo a repo this app just created); a missing one is fine."""
    token = _write_token(token, f"deleting {repo_id}")
    require_online(offline, endpoint, f"delete {repo_id}")
    with hub_errors(endpoint, repo_id=repo_id):
        HfApi(endpoint=base_url(endpoint)).delete_repo(repo_id, token=token, missing_ok=True)


def _normalised(name: str) -> str:
    return re.sub(r"[-_.\s]", "", name.lower())
