"""Turn a LoRA `source` into a local `.safetensors` file.

A source is a library name (`watercolor_style`), a path inside the library or the data
folder, a Hub repo (`user/repo`) or a Hub file (`user/repo/file.safetensors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import hub, library
from .errors import LoraFileError, UnsafeFileError
from .owners import LOCAL, Visitor, readable_roots, visitor_lora_dir
from .settings import Settings

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}


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
    def key(self) -> str:
        stat = self.file.stat()
        return f"{self.file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _check_suffix(source: str) -> None:
    suffix = Path(source).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"{source!r} is a pickle file ({suffix}), which can run code when loaded; LoRA Space loads only "
            ".safetensors. Convert it with a trusted tool first, or pick the repo's .safetensors file."
        )


def _local_file(source: str, settings: Settings, visitor: Visitor) -> ResolvedSource | None:
    path = Path(source).expanduser()
    if not path.exists():
        return None
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in readable_roots(settings, visitor)):
        raise LoraFileError(
            f"{source!r} is outside the LoRA library and the data folder; copy it into "
            f"{settings.lora_dir} (or upload it in the Generate tab) and use its name."
        )
    if resolved.suffix.lower() != ".safetensors" or not resolved.is_file():
        raise LoraFileError(f"{source!r} is not a .safetensors file; LoRA Space loads only .safetensors files.")
    return ResolvedSource(source=source, name=resolved.stem, file=resolved, trigger_words=library.trigger_words_for(resolved))


def hub_file(source: str, *, settings: Settings, token: str | None = None) -> tuple[str, str]:
    """`user/repo` (its main weight file is picked) or `user/repo/file.safetensors` -> (repo, file).

    The repo's files are listed with the caller's token only (never the Space's own).
    """
    parts = source.split("/")
    if len(parts) < 2 or not all(parts):
        raise LoraFileError(
            f"No LoRA named {source!r} in the library ({settings.lora_dir}); use a library name, "
            "a Hub repo 'user/repo', or a Hub file 'user/repo/file.safetensors'."
        )
    repo_id = "/".join(parts[:2])
    filename = "/".join(parts[2:]) or hub.pick_weight_file(
        repo_id, endpoint=settings.hf_endpoint, token=token or False, offline=settings.hf_offline
    )
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


def resolve_source(
    source: str, *, settings: Settings, token: str | None = None, visitor: Visitor = LOCAL
) -> ResolvedSource:
    """Find the LoRA a source names, downloading it from the Hub when needed.

    Hub files are fetched with the caller's `token` only (never the Space's own). Library names
    and local paths are looked up as `visitor` may see them (API.md "Who owns what").

    Raises:
        LoraFileError: nothing by that name, or not a `.safetensors` file.
        UnsafeFileError: a pickle file.
        HubError: the Hub cannot give it (not found, gated, offline).
    """
    source = source.strip()
    if not source:
        raise LoraFileError("A LoRA slot is empty; pick a LoRA from the library or type a Hub id like 'user/repo'.")
    _check_suffix(source)
    # 1. The library, by name or location.
    entry = find_library_entry(source, settings=settings, visitor=visitor)
    if entry is not None:
        return ResolvedSource(source=source, name=entry.name, file=entry.path, trigger_words=list(entry.trigger_words))
    # 2. A local file in the library or the data folder (e.g. a training job's output).
    local = _local_file(source, settings, visitor)
    if local is not None:
        return local
    # 3. The Hub: `user/repo` or `user/repo/file.safetensors`.
    repo_id, filename = hub_file(source, settings=settings, token=token)
    hub_options = {"endpoint": settings.hf_endpoint, "token": token or False, "offline": settings.hf_offline}
    if not settings.hf_offline:  # look at the size first (one small range request) before downloading
        _, size = hub.read_safetensors_header(repo_id, filename, **hub_options)
        limit = settings.limits.max_lora_bytes
        if size > limit:
            raise LoraFileError(
                f"{repo_id}/{filename} is {size / 2**30:.1f} GiB, above the {limit / 2**30:.1f} GiB this Space downloads; "
                "pick a smaller file (resize it in LoRA tools on your own machine)."
            )
    file = hub.download_file(repo_id, filename, **hub_options)
    card = hub.model_card_data(repo_id, **hub_options)
    return ResolvedSource(
        source=source,
        name=repo_id.split("/")[1] if source.count("/") == 1 else Path(filename).stem,
        file=Path(file),
        trigger_words=hub.trigger_words_from_card(card),
        repo_id=repo_id,
        revision=Path(file).parent.name if "snapshots" in Path(file).parts else None,
    )
