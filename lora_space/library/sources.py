"""Turn a LoRA `source` into a local `.safetensors` file.

A source is a library name (`watercolor_style`), a path inside the library or the data
folder, a Hub repo (`user/repo`) or a Hub file (`user/repo/file.safetensors`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lora_space.core.errors import LoraFileError, PromptError, UnsafeFileError
from lora_space.core.settings import Settings
from lora_space.hub.cards import trigger_words_from_card
from lora_space.hub.client import HubClient, is_cached
from lora_space.hub.ids import is_repo_id
from lora_space.library import store as library
from lora_space.library.base import current_base
from lora_space.lora.inspect import inspect_header
from lora_space.lora.safefile import PICKLE_SUFFIXES, SafetensorsHeader, parse_header
from lora_space.visitors.disk import (
    check_write,
    evict_hub_cache,
    note_hub_download,
    record_write,
)
from lora_space.visitors.owners import LOCAL, Visitor, readable_roots, visitor_lora_dir


@dataclass(frozen=True)
class ResolvedSource:
    """A LoRA found: `file` is local, `key` names its content (changes when the file does)."""

    source: str
    name: str
    file: Path
    trigger_words: list[str] = field(default_factory=list)
    repo_id: str | None = None
    revision: str | None = None

    @property
    def label(self) -> str:
        """How messages and grids name it: a Hub LoRA by its repo (and file, when the source names
        one), never by a file stem alone such as `pytorch_lora_weights`; a library LoRA by its name."""
        return self.source if self.repo_id else self.name

    @property
    def key(self) -> str:
        stat = self.file.stat()
        return f"{self.file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def hub_cache_dir() -> Path:
    """The Hub cache downloads go to (`HF_HUB_CACHE`)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _check_suffix(source: str) -> None:
    suffix = Path(source).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"{source!r} is a pickle file ({suffix}), which can run code when loaded; LoRA Space loads only "
            ".safetensors. Convert it with a trusted tool first, or pick the repo's .safetensors file."
        )


def not_found(source: str) -> LoraFileError:
    """The one answer for a name nothing matches, and for any path outside what the caller may read.

    A missing file and a file outside the library get the same words, so nobody learns what
    exists on the server by probing paths; no server path is ever named.
    """
    text = (
        f"No LoRA named {source!r} in your library; use a library name, a Hub repo 'user/repo', or a "
        "Hub file 'user/repo/file.safetensors' (files on this server must be in the LoRA library)."
    )
    if is_plain_name(source):  # the lesson's names (watercolor_style, ...) stand for LoRAs each user picks
        text += (
            f" To find one, search Discover for {source!r} (the Discover tab, or /search_loras with query={source!r}), "
            f"then use its Hub id, or add its file to the library under the name {source!r}."
        )
    return LoraFileError(text)


def is_plain_name(source: str) -> bool:
    """A bare name such as `watercolor_style`: no Hub id (`user/repo`), no path."""
    return bool(source) and "/" not in source and not looks_like_path(source)


def unknown_names(sources: list[str], *, settings: Settings, visitor: Visitor = LOCAL) -> list[str]:
    """The bare names among `sources` that are no LoRA of the visitor's library (in order, each once):
    the ones Discover can help find (`not_found` says so).

    Args:
        sources: LoRA sources as a prompt's tags and the slots give them.
        settings: where the library is.
        visitor: whose library to look in (the shared one and the visitor's own).
    """
    unknown = []
    for source in dict.fromkeys(str(item or "").strip() for item in sources):
        if not is_plain_name(source):
            continue
        try:
            found = resolve_local(source, settings=settings, visitor=visitor)
        except LoraFileError:
            found = None
        if found is None:
            unknown.append(source)
    return unknown


def looks_like_path(source: str) -> bool:
    """A source written as a path or a URL rather than a library name or Hub id."""
    return source.startswith(("/", "~", "./", "../")) or source in (".", "..") or "://" in source or "\\" in source


def _local_file(source: str, settings: Settings, visitor: Visitor) -> ResolvedSource | None:
    """A `.safetensors` file under a root the visitor may read, named by an absolute path or by one
    relative to such a root (or to the working folder). `~` is never expanded.

    Raises:
        LoraFileError: `not_found` for any path-like source that is not such a file.
    """
    roots = readable_roots(settings, visitor)
    given = Path(source)
    candidates = [] if source.startswith("~") else [given] if given.is_absolute() else [given, *(root / given for root in roots)]
    for candidate in candidates:
        try:
            resolved = candidate.resolve()
            inside = next((root for root in roots if resolved.is_relative_to(root)), None)
            usable = inside is not None and resolved.is_file()
        except (OSError, RuntimeError):  # a symlink loop, a name too long
            continue
        if not usable:
            continue
        if resolved.suffix.lower() != ".safetensors":
            raise LoraFileError(f"{source!r} is not a .safetensors file; LoRA Space loads only .safetensors files.")
        name = resolved.relative_to(inside).as_posix()  # never a server path in metadata or recipes
        return ResolvedSource(source=name, name=resolved.stem, file=resolved, trigger_words=library.trigger_words_for(resolved))
    if looks_like_path(source):
        raise not_found(source)
    return None


_BAD_FILE_CHARS = re.compile(r"[?#%\\\x00-\x1f\x7f]")


def split_hub_source(source: str) -> tuple[str, str]:
    """`user/repo` -> (repo, ""), `user/repo/dir/file.safetensors` -> (repo, file), both checked.

    The repo id must be a valid Hub id and the file name a plain relative path: no `..` or `.`
    segment, no empty segment, no `?`, `#`, `%`, backslash or control character, so that a
    source names one file of one repo and never another URL of the endpoint.

    Raises:
        LoraFileError: `not_found` for anything else.
    """
    parts = source.split("/")
    if len(parts) < 2 or looks_like_path(source):
        raise not_found(source)
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if not is_repo_id(repo_id):
        raise not_found(source)
    if parts[2:] and (
        any(part in ("", ".", "..") for part in parts[2:]) or _BAD_FILE_CHARS.search(filename) or len(filename) > 500
    ):
        raise not_found(source)
    return repo_id, filename


def hub_file(source: str, *, hub: HubClient, revision: str | None = None) -> tuple[str, str]:
    """`user/repo` (its main weight file is picked) or `user/repo/file.safetensors` -> (repo, file).

    The repo's files are listed with the caller's token only (never the Space's own).
    """
    repo_id, filename = split_hub_source(source)
    filename = filename or hub.weight_file(repo_id, revision=revision)
    _check_suffix(filename)
    if not filename.endswith(".safetensors"):
        raise LoraFileError(f"{source!r} does not name a .safetensors file; LoRA Space loads only .safetensors files.")
    return repo_id, filename


def find_library_entry(source: str, *, settings: Settings, visitor: Visitor = LOCAL) -> library.LibraryEntry | None:
    """The library entry `source` names: the shared library first, then `visitor`'s own."""
    entry = library.find_entry(settings.lora_dir, source)
    if entry is None and not visitor.is_local:
        entry = library.find_entry(visitor_lora_dir(settings, visitor), source)
    return entry


def resolve_local(source: str, *, settings: Settings, visitor: Visitor = LOCAL) -> ResolvedSource | None:
    """The LoRA `source` names on this server (library name or location, or a file path), or None
    for a name that can only be a Hub id.

    Raises:
        LoraFileError: `not_found` for a path outside what `visitor` may read, or missing.
    """
    source = source.strip()
    entry = find_library_entry(source, settings=settings, visitor=visitor)
    if entry is not None:
        return ResolvedSource(source=source, name=entry.name, file=entry.path, trigger_words=list(entry.trigger_words))
    return _local_file(source, settings, visitor)


def check_fits_base(header: SafetensorsHeader, *, label: str, settings: Settings, token: str | None = None) -> None:
    """Refuse a LoRA none of whose modules lands on the base model the app runs (from its header alone).

    Raises:
        LoraFileError: it would do nothing on this base; the message names `label` and says why.
    """
    report = inspect_header(header, source=label, base=current_base(settings, token=token))
    if not report.compatible:
        raise LoraFileError(
            f"{label} does not fit the base model {report.base_model}, so it was not downloaded: {report.reason} "
            "Pick a LoRA made for this model (Discover lists them)."
        )


def resolve_source(
    source: str, *, settings: Settings, token: str | None = None, visitor: Visitor = LOCAL, fits_base: bool = False
) -> ResolvedSource:
    """Find the LoRA a source names, downloading it from the Hub when needed.

    Hub files are fetched with the caller's `token` only (never the Space's own). Library names
    and local paths are looked up as `visitor` may see them (API.md "Who owns what"). With
    `fits_base` (Generate, Bake), a Hub file that fits no module of the base model is refused from
    its header, before it is downloaded.

    Raises:
        LoraFileError: nothing by that name, not a `.safetensors` file, or (`fits_base`) made for another base.
        UnsafeFileError: a pickle file.
        HubError: the Hub cannot give it (not found, gated, offline).
    """
    source = source.strip()
    if not source:
        raise LoraFileError("A LoRA slot is empty; pick a LoRA from the library or type a Hub id like 'user/repo'.")
    _check_suffix(source)
    # 1-2. The library by name or location, or a file under a folder the visitor may read.
    local = resolve_local(source, settings=settings, visitor=visitor)
    if local is not None:
        return local
    # 3. The Hub: `user/repo` or `user/repo/file.safetensors`, pinned to one commit: the size
    #    check, the file list, the download and the card all see the same revision.
    repo_id, _ = split_hub_source(source)
    hub = HubClient.for_caller(settings, token)
    revision, card = (None, None) if settings.hf_offline else hub.repo_commit(repo_id)
    repo_id, filename = hub_file(source, hub=hub, revision=revision)
    if not settings.hf_offline:  # look at the size first (one small range request) before downloading
        raw, size = hub.read_header(repo_id, filename, revision=revision)
        limit = settings.limits.max_lora_bytes
        if size > limit:
            raise LoraFileError(
                f"{repo_id}/{filename} is {size / 2**30:.1f} GiB, above the {limit / 2**30:.1f} GiB this Space downloads; "
                "pick a smaller file (resize it in LoRA tools on your own machine)."
            )
        header = parse_header(raw, size, name=f"{repo_id}/{filename}")  # every bound of the one reader, before downloading
        if fits_base:
            check_fits_base(header, label=source, settings=settings, token=token)
    fresh = not settings.hf_offline and not is_cached(repo_id, filename, revision=revision)
    if fresh:  # a download: the disk bounds first (a Space's Hub cache is not any visitor's quota)
        check_write(settings, size, where=hub_cache_dir())
    file = hub.download(repo_id, filename, revision=revision, max_bytes=settings.limits.max_lora_bytes)
    if fresh:
        record_write(settings, Path(file).stat().st_size)
        note_hub_download(settings, repo_id)
        evict_hub_cache(settings, keep={repo_id})  # the cache's least recently used LoRAs go past its bound
    card = card if card is not None else hub.card_data(repo_id)
    return ResolvedSource(
        source=source,
        name=repo_id.split("/")[1] if source.count("/") == 1 else Path(filename).stem,
        file=Path(file),
        trigger_words=trigger_words_from_card(card),
        repo_id=repo_id,
        revision=revision or (Path(file).parent.name if "snapshots" in Path(file).parts else None),
    )


def check_distinct(resolved: list[ResolvedSource]) -> None:
    """Refuse one file named twice (a library name and its path, `user/repo` and its file, a hard link).

    Files are told apart by what they are on disk (device and inode), not by the names they were given.

    Raises:
        PromptError: two of `resolved` are the same file; the message names both.
    """
    seen: dict[tuple[int, int], str] = {}
    for item in resolved:
        stat = item.file.stat()
        identity = (stat.st_dev, stat.st_ino)
        if identity in seen:
            raise PromptError(
                f"{seen[identity]!r} and {item.source!r} are the same LoRA file; give it once (with the strength you want)."
            )
        seen[identity] = item.source
