"""The hashes other tools use to name a LoRA or a model file, computed once per file.

A1111/Forge write `Lora hashes: "name: 0123456789ab, ..."` into an image's parameters, and
Civitai links each LoRA of an image by that value. It is the hash of
sd-webui-additional-networks (sd-scripts' `addnet_hash_safetensors`): the SHA-256 of the file's
tensor data, everything after the 8-byte length and the JSON header, so that editing the
metadata does not change it; A1111 shows its first 12 hex digits. `Model hash` is the first
10 hex digits of the SHA-256 of the whole checkpoint file.

Hashing a FLUX LoRA reads the whole file, so each hash is computed once and kept in a small
JSON cache in the data folder (`HashCache`), keyed by the file's path, size and modification
time: an edited or replaced file gets a fresh hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from lora_space.core.atomic import write_atomically
from lora_space.lora.safefile import read_local_header

logger = logging.getLogger(__name__)

LORA_SHORT = 12  # A1111's `Lora hashes` (network.py: shorthash = hash[0:12])
MODEL_SHORT = 10  # A1111's `Model hash` (sd_models: shorthash = sha256[0:10])
MIN_PREFIX = 8  # the shortest hash prefix a lookup accepts
CHUNK = 1024 * 1024
MAX_ENTRIES = 20_000


def _sha256(path: Path, start: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(start)
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lora_file_hash(path: str | Path) -> str:
    """The 64-hex SHA-256 of a `.safetensors` file's tensor data (after the header).

    Raises:
        UnsafeFileError, LoraFileError: not a readable safetensors file (`safefile.read_local_header`).
    """
    path = Path(path)
    return _sha256(path, read_local_header(path).data_start)


def model_file_hash(path: str | Path) -> str:
    """The 64-hex SHA-256 of a whole file (a single-file checkpoint)."""
    return _sha256(Path(path), 0)


def is_hash_prefix(text: str) -> bool:
    """Whether `text` can be a hash prefix to look up: 8 to 64 hex digits."""
    return MIN_PREFIX <= len(text) <= 64 and all(char in "0123456789abcdefABCDEF" for char in text)


@dataclass(frozen=True)
class _Stamp:
    size: int
    mtime_ns: int


class HashCache:
    """File hashes kept in a JSON file, valid while a file's size and modification time stay.

    One per `LoraSpace`; safe to share between threads. A cache file that cannot be read is
    started afresh (it only saves time).

    Args:
        path: the JSON file (its folder is made when the first hash is saved).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict] | None = None

    def lora_hash(self, file: str | Path) -> str:
        """`lora_file_hash(file)`, from the cache when the file has not changed."""
        return self._get(Path(file), "lora", lora_file_hash)

    def model_hash(self, file: str | Path) -> str:
        """`model_file_hash(file)`, from the cache when the file has not changed."""
        return self._get(Path(file), "model", model_file_hash)

    # -- internals -----------------------------------------------------------------------

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            self._entries = data if isinstance(data, dict) else {}
        return self._entries

    def _get(self, file: Path, kind: str, compute) -> str:
        key = f"{kind}:{file.resolve()}"
        stat = file.stat()
        stamp = _Stamp(stat.st_size, stat.st_mtime_ns)
        with self._lock:
            entry = self._load().get(key)
            if isinstance(entry, dict) and entry.get("size") == stamp.size and entry.get("mtime_ns") == stamp.mtime_ns:
                value = entry.get("sha256")
                if isinstance(value, str) and len(value) == 64:
                    return value
        value = compute(file)  # outside the lock: other files need not wait for a large one
        with self._lock:
            entries = self._load()
            entries[key] = {"size": stamp.size, "mtime_ns": stamp.mtime_ns, "sha256": value}
            while len(entries) > MAX_ENTRIES:
                entries.pop(next(iter(entries)))
            self._save(entries)
        return value

    def _save(self, entries: dict[str, dict]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(entries, indent=0, sort_keys=True).encode("utf-8")
            write_atomically(self.path, lambda handle: handle.write(text))
        except OSError as error:  # a read-only data folder costs speed, not correctness
            logger.warning("could not save the hash cache %s: %s", self.path.name, error)
