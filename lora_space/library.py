"""The local LoRA library: the `*.safetensors` files below `LORA_SPACE_LORA_DIR`.

The course's `models/loras/` folder. Each file is one entry, named by its file stem
(`watercolor_style.safetensors` is `watercolor_style`); when two files in different
subfolders share a stem, both are named by their path without the suffix
(`styles/watercolor`). Hidden files and folders (starting with `.`) are skipped.

Trigger words come from the first of these that gives any:

1. a sidecar `NAME.txt` next to the file: words separated by commas or line breaks;
2. a sidecar `NAME.json`: `trigger_words` (list or string), `trigger_word` or `instance_prompt`;
3. the safetensors `__metadata__`: `trigger_words`, `trigger_word`, `instance_prompt`,
   `modelspec.trigger_phrase`.

Only the JSON header of a file is read, and only within bounds; a file that breaks them is
listed with format "invalid" and a `problem`, and the scan goes on.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import write_atomically
from .errors import LoraFileError
from .lora.keymap import detect_format
from .lora.safefile import read_local_header
from .prompts import clean_trigger_words

SUFFIX = ".safetensors"
MAX_SIDECAR_BYTES = 1024 * 1024

_JSON_SIDECAR_KEYS = ("trigger_words", "trigger_word", "instance_prompt")
_METADATA_KEYS = ("trigger_words", "trigger_word", "instance_prompt", "modelspec.trigger_phrase")
_NAME = re.compile(r"[\w][\w .()+\-]{0,99}")


@dataclass(frozen=True)
class LibraryEntry:
    """One LoRA file in the library.

    Attributes:
        name: what a prompt tag or a `source` calls it (`<lora:NAME:0.8>`).
        location: its path relative to the library folder, with `/`.
        path: its absolute path (never sent to clients).
        size_bytes: the file size.
        format: `diffusers`, `peft`, `kohya`, `xlabs`, `comfyui`, `unknown`, or `invalid`
            for a file whose header cannot be read.
        trigger_words: the words that switch the LoRA on.
        problem: what is wrong with the entry, or None.
    """

    name: str
    location: str
    path: Path
    size_bytes: int
    format: str
    trigger_words: tuple[str, ...] = ()
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as `/list_loras` returns it (no `path` key: gradio_client would take it for a file)."""
        return {
            "name": self.name,
            "location": self.location,
            "size_bytes": self.size_bytes,
            "format": self.format,
            "trigger_words": list(self.trigger_words),
            "problem": self.problem,
        }


def guess_format(keys: Iterable[str]) -> str:
    """The LoRA's key layout from its tensor names (`lora.keymap.detect_format`)."""
    return detect_format({key for key in keys if key != "__metadata__"})


def _words(value: Any) -> list[str]:
    """Trigger words from a list, a JSON list in a string, or a comma/line separated string."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # not a JSON list (or one nested 200,000 deep): no words
            return []
    if isinstance(value, str):
        value = re.split(r"[,\n]", value)
    if not isinstance(value, list):
        return []
    return clean_trigger_words(value)


def _first_words(mapping: dict[str, Any], keys: Iterable[str]) -> list[str]:
    for key in keys:
        words = _words(mapping.get(key))
        if words:
            return words
    return []


def _read_small_text(path: Path) -> str:
    if path.stat().st_size > MAX_SIDECAR_BYTES:
        raise ValueError(f"over {MAX_SIDECAR_BYTES:,} bytes")
    return path.read_text(encoding="utf-8")


def _sidecar_words(path: Path) -> tuple[list[str], str | None]:
    """Trigger words from `NAME.txt` or `NAME.json`, and a problem if a sidecar is unreadable."""
    text_file, json_file = path.with_suffix(".txt"), path.with_suffix(".json")
    try:
        if text_file.is_file():
            words = _words(_read_small_text(text_file))
            if words:
                return words, None
        if json_file.is_file():
            data = json.loads(_read_small_text(json_file))
            return (_first_words(data, _JSON_SIDECAR_KEYS) if isinstance(data, dict) else []), None
    except (OSError, ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else getattr(error, "strerror", None) or error
        return [], f"Its sidecar file cannot be read ({reason}); fix or delete it."
    return [], None


def _entry(lora_dir: Path, name: str, path: Path) -> LibraryEntry:
    location = path.relative_to(lora_dir).as_posix()
    words, problem = _sidecar_words(path)
    size = path.stat().st_size if path.is_file() else 0
    try:
        header = read_local_header(path)  # the one reader, with the bounds the engine applies
    except (LoraFileError, OSError) as error:
        message = str(error) if isinstance(error, LoraFileError) else f"{location} cannot be read ({error.strerror or type(error).__name__})."
        return LibraryEntry(name, location, path, size, "invalid", tuple(words), message)
    if not words:
        words = _first_words(header.metadata, _METADATA_KEYS)
    return LibraryEntry(name, location, path, size, guess_format(header.tensors), tuple(words), problem)


def metadata_trigger_words(metadata: dict[str, Any]) -> list[str]:
    """Trigger words a safetensors `__metadata__` declares (rule 3 of the module docstring)."""
    return _first_words(metadata, _METADATA_KEYS)


def trigger_words_for(path: Path) -> list[str]:
    """Trigger words of a LoRA file anywhere (e.g. a training output): its sidecar, else its metadata."""
    path = Path(path)
    return list(_entry(path.parent, path.stem, path).trigger_words)


def _library_files(lora_dir: Path) -> list[tuple[str, Path]]:
    """`(name, path)` of every library file, sorted by name; reads no file."""
    if not lora_dir.is_dir():
        return []
    lora_dir = lora_dir.resolve()
    paths = [
        path
        for path in lora_dir.rglob("*")
        if path.suffix.lower() == SUFFIX
        and not any(part.startswith(".") for part in path.relative_to(lora_dir).parts)
        and path.is_file()
        and path.resolve().is_relative_to(lora_dir)  # a symlink may not lead out of the library
    ]
    stems: dict[str, int] = {}
    for path in paths:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    named = [
        (path.stem if stems[path.stem] == 1 else path.relative_to(lora_dir).with_suffix("").as_posix(), path)
        for path in paths
    ]
    return sorted(named, key=lambda item: (item[0].casefold(), item[0]))


def scan_library(lora_dir: Path | str) -> list[LibraryEntry]:
    """Every LoRA in the library, sorted by name; an empty list if the folder does not exist."""
    root = Path(lora_dir).resolve()
    return [_entry(root, name, path) for name, path in _library_files(root)]


def find_entry(lora_dir: Path | str, name: str) -> LibraryEntry | None:
    """The entry called `name`, or at location `name` (with or without `.safetensors`), or None."""
    root = Path(lora_dir).resolve()
    for entry_name, path in _library_files(root):
        location = path.relative_to(root).as_posix()
        if name in (entry_name, location, location[: -len(SUFFIX)]):
            return _entry(root, entry_name, path)
    return None


def check_name(name: str) -> str:
    """`name` as a library name (stripped, without `.safetensors`), or a `LoraFileError` saying why not."""
    name = name.strip()
    if name.lower().endswith(SUFFIX):
        name = name[: -len(SUFFIX)]
    if not _NAME.fullmatch(name) or ".." in name or name.endswith((" ", ".")):
        raise LoraFileError(
            f"{name!r} cannot be a library name; use up to 100 letters, digits, spaces and . _ - ( ) +, "
            "starting with a letter or digit, with no '/' or '..', e.g. 'watercolor_style'."
        )
    return name


def add_to_library(
    lora_dir: Path | str, uploaded_path: Path | str, *, name: str | None = None, overwrite: bool = False
) -> LibraryEntry:
    """Copy an uploaded `.safetensors` LoRA into the library.

    Args:
        lora_dir: the library folder (made if missing).
        uploaded_path: the uploaded file.
        name: the library name; the uploaded file's stem by default.
        overwrite: replace an entry of that name (wherever it is in the library).

    Returns:
        The new entry.

    Raises:
        LoraFileError: not a `.safetensors` file, a damaged one, a bad name, or the name is
            taken and `overwrite` is False.
        UnsafeFileError: a pickle or zip file under a `.safetensors` name, or a header over the bounds.
    """
    lora_dir, uploaded_path = Path(lora_dir), Path(uploaded_path)
    if uploaded_path.suffix.lower() != SUFFIX:
        raise LoraFileError(
            f"'{uploaded_path.name}' is not a .safetensors file; only safetensors LoRAs can be added "
            "(pickle-based .ckpt/.pt/.bin files can run code when loaded). Convert it to .safetensors first."
        )
    try:
        read_local_header(uploaded_path)  # checked before anything is written
    except OSError as error:
        raise LoraFileError(
            f"'{uploaded_path.name}' cannot be read ({error.strerror or error}); upload it again."
        ) from None
    name = check_name(name if name is not None else uploaded_path.stem)
    lora_dir.mkdir(parents=True, exist_ok=True)
    root = lora_dir.resolve()
    existing = find_entry(root, name)
    target = existing.path if existing is not None else root / f"{name}{SUFFIX}"
    location = target.relative_to(root).as_posix()
    if target.exists() and not overwrite:
        raise LoraFileError(
            f"The library already has a LoRA named {name!r} ({location}); "
            "choose another name, or pass overwrite=True to replace it."
        )
    with uploaded_path.open("rb") as source:
        write_atomically(target, lambda file: shutil.copyfileobj(source, file, 1024 * 1024))
    entry = find_entry(root, location)
    if entry is None:
        raise LoraFileError(f"{name!r} was removed from the library while it was being added; add it again.")
    return entry


def write_sidecar(lora_dir: Path | str, name: str, trigger_words: Iterable[str]) -> Path:
    """Save a LoRA's trigger words in its `NAME.txt` sidecar (which wins over JSON and metadata).

    Returns:
        The sidecar path.

    Raises:
        LoraFileError: no entry of that name, or a word holding a comma.
    """
    words = [" ".join(word.split()) for word in trigger_words]
    for word in words:
        if "," in word:
            raise LoraFileError(f"The trigger word {word!r} holds a comma; give each word separately, without commas.")
    entry = find_entry(lora_dir, name)
    if entry is None:
        raise LoraFileError(f"The library has no LoRA named {name!r}; pick one from the list of library LoRAs.")
    sidecar = entry.path.with_suffix(".txt")
    text = ", ".join(word for word in words if word) + "\n"
    write_atomically(sidecar, lambda file: file.write(text.encode("utf-8")))
    return sidecar
