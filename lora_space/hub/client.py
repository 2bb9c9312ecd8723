"""`HubClient`: every Hub call the app makes, for one caller.

A client holds the Hub endpoint (huggingface_hub reads `HF_ENDPOINT` only once, at import), whether
the app is offline, and the caller's token. Every request sends that token or none
(`HubClient.auth`, the one place that says so), never huggingface_hub's default (`HF_TOKEN`, the
Space's own, which only loads the base model: `HubClient.for_machine`). Offline, a call refuses
with a `HubError` before sending anything (`download` reads the local cache instead).

    hub = HubClient.for_caller(settings, token)
    sha, card = hub.repo_commit("alice/watercolor-lora")

huggingface_hub errors become `HubError`s whose message says what is wrong and what to do;
files that cannot be used become `LoraFileError`s. No message ever holds a token.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
)

from lora_space.core.errors import HubError, LoraFileError, UnsafeFileError
from lora_space.hub import http, search
from lora_space.hub.http import (
    base_url,
    hub_errors,
    ranged_reader,
    require_online,
)
from lora_space.hub.search import HubModel
from lora_space.lora import safefile

logger = logging.getLogger(__name__)

HEADER_PROBE_END = 100_000
"""Last byte of the first ranged read of a safetensors file (100,001 bytes, as huggingface_hub reads)."""
MAX_HEADER_BYTES = safefile.MAX_HEADER_BYTES  # one set of bounds: the one safetensors reader's
CANONICAL_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DOWNLOADABLE_SUFFIXES = frozenset({".safetensors", ".json", ".txt", ".md", ".png", ".jpg", ".jpeg", ".webp", ".gif"})
PICKLE_SUFFIXES = safefile.PICKLE_SUFFIXES


def is_cached(repo_id: str, filename: str, *, revision: str | None = None, cache_dir: Path | None = None) -> bool:
    """Whether the Hub cache already holds this file at this revision (no request is made)."""
    return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision), str)


def pick_weight_file(repo_id: str, files: Sequence[tuple[str, int]]) -> str:
    """Choose the main LoRA file among a repo's `(name, size)` files (`HubClient.weight_files`).

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
    """
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


def _normalised(name: str) -> str:
    return re.sub(r"[-_.\s]", "", name.lower())


@dataclass(frozen=True)
class CreatedRepo:
    """A model repo made by `HubClient.create_repo`: its id and its page on the Hub."""

    repo_id: str
    url: str


@dataclass(frozen=True)
class Commit:
    """A commit made by `HubClient.create_commit`: the repo, the commit id and its page on the Hub."""

    repo_id: str
    oid: str
    url: str


@dataclass(frozen=True)
class HubClient:
    """The Hub as one caller reaches it.

    Attributes:
        endpoint: the Hub's URL (`Settings.hf_endpoint`).
        offline: refuse every request before sending it (`HF_HUB_OFFLINE`).
        token: the caller's token; None or "" for an anonymous caller (never the machine's own).
        machine: send the machine's own login (`HF_TOKEN`) when `token` is empty: for the base
            model only (`HubClient.for_machine`), never for a visitor's request.
    """

    endpoint: str
    offline: bool = False
    token: str | None = field(default=None, repr=False)
    machine: bool = False

    @classmethod
    def for_caller(cls, settings: Any, token: str | None = None) -> HubClient:
        """The Hub for a visitor's request, with their token or none (`settings`: a `Settings`)."""
        return cls(settings.hf_endpoint, offline=settings.hf_offline, token=token or None)

    @classmethod
    def for_machine(cls, settings: Any, token: str | None = None) -> HubClient:
        """The Hub as the Space itself reaches it (`token`, else its `HF_TOKEN`): the base model only."""
        return cls(settings.hf_endpoint, offline=settings.hf_offline, token=token or None, machine=True)

    @property
    def auth(self) -> str | bool | None:
        """What each request sends as `token=`: the caller's, else `False` (none).

        huggingface_hub reads `token=None` as "the machine's own" (`HF_TOKEN`, then the saved login):
        on a Space that is the Space's token, which must never serve a visitor's request.
        """
        return self.token or (None if self.machine else False)

    @property
    def url(self) -> str:
        return base_url(self.endpoint)

    def api(self) -> HfApi:
        return HfApi(endpoint=self.url, token=self.auth)

    def _online(self, action: str) -> None:
        require_online(self.offline, self.endpoint, action)

    def _write_token(self, action: str) -> str:
        if not self.token:
            raise HubError(f"Log in with your Hugging Face account first: {action} needs your Hub token.")
        return self.token

    # -- reading files --------------------------------------------------------------------

    def read_header(
        self, repo_id: str, filename: str, *, revision: str | None = None, max_header_bytes: int = MAX_HEADER_BYTES
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
        self._online(f"read {where}")
        if not filename.lower().endswith(".safetensors"):
            raise LoraFileError(f"{where} is not a .safetensors file; LoRA Space reads only safetensors LoRAs.")
        read = ranged_reader(repo_id, filename, endpoint=self.endpoint, token=self.auth, revision=revision)
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
            raise HubError(f"The Hub at {self.url} sent a short answer for {where}; try again.")
        return header, total

    def read_text(self, repo_id: str, filename: str, *, revision: str | None = None, max_bytes: int = search.MAX_CARD_BYTES) -> tuple[str, bool]:
        """A text file of a repo (a model card) by ONE ranged read of its first `max_bytes` bytes.

        Returns:
            The text (undecodable bytes replaced) and whether it was cut at `max_bytes`.

        Raises:
            HubError: not found, gated, offline, unreachable.
        """
        self._online(f"read {repo_id}/{filename}")
        read = ranged_reader(repo_id, filename, endpoint=self.endpoint, token=self.auth, revision=revision)
        body, total = read(0, max_bytes - 1)
        return body.decode("utf-8", errors="replace"), total > max_bytes

    def download(
        self,
        repo_id: str,
        filename: str,
        *,
        revision: str | None = None,
        cache_dir: Path | None = None,
        max_bytes: int | None = None,
        cached_only: bool = False,
    ) -> Path:
        """Download one file of a model repo into the Hub cache and return its local path.

        Only `.safetensors` weights and harmless companions (README/Markdown, JSON, text, images) are
        fetched: the app never loads pickled weights. Offline (or `cached_only`), the file comes from
        the local cache. With `max_bytes`, a file not yet cached is measured first (one HEAD request)
        and refused above it; pass a commit sha as `revision` so that what was measured is what is fetched.

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
        local_only = self.offline or cached_only
        with hub_errors(self.endpoint, repo_id=repo_id, filename=filename, revision=revision):
            if max_bytes is not None and not local_only and not is_cached(repo_id, filename, cache_dir=cache_dir, revision=revision):
                url = hf_hub_url(repo_id, filename, revision=revision, endpoint=self.url)
                size = get_hf_file_metadata(url, token=self.auth, timeout=http.TIMEOUT_S, endpoint=self.url).size
                if size is None or size > max_bytes:
                    raise LoraFileError(
                        f"{repo_id}/{filename} is {(size or 0) / 2**30:.1f} GiB, above the {max_bytes / 2**30:.1f} GiB "
                        "this Space downloads; pick a smaller file."
                    )
            try:
                path = hf_hub_download(
                    repo_id, filename, revision=revision, endpoint=self.url, token=self.auth, cache_dir=cache_dir, local_files_only=local_only
                )
            except LocalEntryNotFoundError:
                if not local_only:
                    raise
                raise HubError(
                    f"{repo_id}/{filename} is not in the local cache and the app is offline (HF_HUB_OFFLINE is set); "
                    "download it once while online, or unset HF_HUB_OFFLINE."
                ) from None
        return Path(path)

    def snapshot(self, repo_id: str, *, allow_patterns: Sequence[str]) -> Path:
        """A whole model repo's files matching `allow_patterns`, cached (the base model's folder).

        Errors are huggingface_hub's own: the base model's loader says what each means for it.
        """
        folder = snapshot_download(
            repo_id, allow_patterns=list(allow_patterns), token=self.auth, endpoint=self.url, local_files_only=self.offline
        )
        return Path(folder)

    # -- reading repos --------------------------------------------------------------------

    def weight_files(self, repo_id: str, *, revision: str | None = None) -> list[tuple[str, int]]:
        """The `.safetensors` files of a model repo with their sizes in bytes, in the Hub's order."""
        self._online(f"list the files of {repo_id}")
        with hub_errors(self.endpoint, repo_id=repo_id, revision=revision):
            info = self.api().model_info(repo_id, revision=revision, files_metadata=True, timeout=http.TIMEOUT_S)
        return [
            (sibling.rfilename, sibling.size or 0)
            for sibling in info.siblings or []
            if sibling.rfilename.lower().endswith(".safetensors")
        ]

    def weight_file(self, repo_id: str, *, revision: str | None = None) -> str:
        """The repo's main LoRA file (`pick_weight_file` over `weight_files`)."""
        return pick_weight_file(repo_id, self.weight_files(repo_id, revision=revision))

    def repo_commit(self, repo_id: str) -> tuple[str, dict[str, Any]]:
        """The repo's current commit sha and its model card's metadata, in one call.

        Pass the sha as `revision` to every later read of the repo (size check, file list, download),
        so that they all see the same files even if the repo changes meanwhile.
        """
        self._online(f"look up {repo_id}")
        with hub_errors(self.endpoint, repo_id=repo_id):
            info = self.api().model_info(repo_id, expand=["sha", "cardData"], timeout=http.TIMEOUT_S)
        if not info.sha:
            raise HubError(f"The Hub at {self.url} did not say which commit {repo_id} is at; try again later.")
        return info.sha, info.card_data.to_dict() if info.card_data is not None else {}

    def card_data(self, repo_id: str) -> dict[str, Any]:
        """The YAML metadata of a repo's model card (the Hub's `cardData`); empty without a card."""
        self._online(f"read the model card of {repo_id}")
        with hub_errors(self.endpoint, repo_id=repo_id):
            info = self.api().model_info(repo_id, expand=["cardData"], timeout=http.TIMEOUT_S)
        return info.card_data.to_dict() if info.card_data is not None else {}

    def search_loras(self, base_model: str, *, query: str = "", sort: str = "downloads", limit: int = 24) -> list[HubModel]:
        """The first `limit` LoRAs for `base_model` on the Hub, best first: ONE request.

        A LoRA for a base model carries the tags `lora` and `base_model:adapter:<base_model>`
        (the Hub derives the second from the card's `base_model`).

        Args:
            base_model: the Hub id the LoRAs must be made for.
            query: free text matched against repo ids ("" for all).
            sort: `downloads`, `likes`, `trending` or `recent` (last modified).
            limit: how many results, 1 to `search.MAX_RESULTS`.

        Raises:
            HubError: offline, unreachable, rate-limited (429), or the Hub refuses.
            ValueError: an unknown sort or a limit out of range (checked by the caller's layer first).
        """
        if sort not in search.SORTS:
            raise ValueError(f"unknown sort {sort!r}")
        if not 1 <= limit <= search.MAX_RESULTS:
            raise ValueError(f"limit {limit} is outside 1..{search.MAX_RESULTS}")
        self._online("search for LoRAs")
        with hub_errors(self.endpoint):
            found = self.api().list_models(
                filter=["lora", f"base_model:adapter:{base_model}"],
                search=query.strip() or None,
                sort=search.SORTS[sort],  # type: ignore[arg-type]
                limit=limit,  # one page of `limit` results: list_models stops there
                expand=search.EXPAND,  # type: ignore[arg-type]
            )
            return [search.hub_model(info) for info in found]

    def model_details(self, repo_id: str) -> HubModel:
        """One repo's facts (the same fields as a search result), in one `model_info` request.

        Raises:
            HubError: not found, private, offline, unreachable.
        """
        self._online(f"read {repo_id}")
        with hub_errors(self.endpoint, repo_id=repo_id):
            info = self.api().model_info(repo_id, expand=search.EXPAND, timeout=http.TIMEOUT_S)  # type: ignore[arg-type]
        return search.hub_model(info)

    # -- accounts and writes: the caller's own token, always ----------------------------------

    def whoami(self) -> dict[str, Any]:
        """Who the token belongs to: the Hub's `whoami-v2` answer (`name`, `orgs`, `auth`, ...).

        Raises:
            HubError: no token (never falls back to the machine's own login), offline, or the Hub
                refuses the token.
        """
        token = self._write_token("this")
        self._online("check your login")
        with hub_errors(self.endpoint):
            return HfApi(endpoint=self.url).whoami(token=token)

    def repo_exists(self, repo_id: str) -> bool:
        """Whether the model repo `repo_id` exists and the caller can see it (a gated repo exists)."""
        self._online(f"look up {repo_id}")
        with hub_errors(self.endpoint, repo_id=repo_id):
            return self.api().repo_exists(repo_id, token=self.auth)

    def create_repo(self, repo_id: str, *, private: bool = True) -> CreatedRepo:
        """Create the model repo `repo_id` with the caller's token (never the machine's login).

        Raises:
            HubError: no token, offline, the repo exists already, or the Hub refuses (no write access).
        """
        token = self._write_token(f"creating {repo_id}")
        self._online(f"create {repo_id}")
        with hub_errors(self.endpoint, repo_id=repo_id):
            try:
                url = HfApi(endpoint=self.url).create_repo(repo_id, token=token, private=private, exist_ok=False)
            except HfHubHTTPError as error:
                if error.response.status_code != 409:
                    raise
                raise HubError(f"{repo_id} already exists on the Hub; choose another name.") from None
        return CreatedRepo(repo_id=url.repo_id or repo_id, url=str(url))

    def create_commit(self, repo_id: str, files: Mapping[str, Path | bytes], *, message: str, description: str = "") -> Commit:
        """Add `files` (path in the repo -> local file or bytes) to `repo_id` in one commit.

        One `create_commit` call: the Hub applies all files or none.

        Raises:
            HubError: no token, offline, or the Hub refuses (no write access, invalid card YAML).
        """
        token = self._write_token(f"committing to {repo_id}")
        self._online(f"commit to {repo_id}")
        operations = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(content) if isinstance(content, Path) else content)
            for path, content in files.items()
        ]
        with hub_errors(self.endpoint, repo_id=repo_id):
            try:
                info = HfApi(endpoint=self.url).create_commit(
                    repo_id, operations, commit_message=message, commit_description=description or None, token=token
                )
            except (HFValidationError, HfHubHTTPError):
                raise
            except ValueError as error:  # the Hub's /api/validate-yaml refused README.md
                raise HubError(f"The Hub refused the model card (README.md): {error}; fix its YAML block.") from None
        return Commit(repo_id=repo_id, oid=info.oid, url=info.commit_url)

    def delete_repo(self, repo_id: str) -> None:
        """Delete the model repo `repo_id` (used to undo a repo this app just created); a missing one is fine."""
        token = self._write_token(f"deleting {repo_id}")
        self._online(f"delete {repo_id}")
        with hub_errors(self.endpoint, repo_id=repo_id):
            HfApi(endpoint=self.url).delete_repo(repo_id, token=token, missing_ok=True)
