"""Reading a dataset zip that nobody checked, one member at a time, within fixed bounds.

Nothing is extracted with `extractall`: each member's name is checked (no `../`, no absolute
names, no symbolic links), encrypted members and nested archives are skipped, and the bytes
are counted as they are read, so a header that lies about sizes cannot make the app read more
than the limits. Every skipped member becomes a `Skipped` entry with its reason.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import DatasetError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar")
CHUNK = 1 << 20


@dataclass(frozen=True)
class ZipLimits:
    """Bounds on what one dataset zip may make the app read.

    Args:
        max_members: entries in the zip's directory (folders included).
        max_member_bytes: uncompressed bytes of one member, counted while reading.
        max_total_bytes: uncompressed bytes of all members together.
    """

    max_members: int = 10_000
    max_member_bytes: int = 64 * 2**20
    max_total_bytes: int = 1024 * 2**20

    def __post_init__(self) -> None:
        if min(self.max_members, self.max_member_bytes, self.max_total_bytes) < 1:
            raise ValueError("ZipLimits: every limit must be at least 1.")


@dataclass(frozen=True)
class Skipped:
    """A member that was not used, and why (shown in the dataset report)."""

    file: str
    reason: str


@dataclass(frozen=True)
class Member:
    """A member that passed the checks: its path inside the zip (POSIX parts) and its bytes."""

    parts: tuple[str, ...]
    data: bytes

    @property
    def name(self) -> str:
        return "/".join(self.parts)


def display_name(name: str) -> str:
    """A member name as shown in a report: printable and short."""
    clean = "".join(char if char.isprintable() else "?" for char in name)
    return clean if len(clean) <= 120 else clean[:117] + "..."


def is_junk(parts: tuple[str, ...]) -> bool:
    """macOS resource forks (`__MACOSX/`), dotfiles and Windows' `Thumbs.db`/`desktop.ini`."""
    return any(part.startswith(".") or part == "__MACOSX" for part in parts) or parts[-1].lower() in ("thumbs.db", "desktop.ini")


def safe_parts(name: str) -> tuple[str, ...] | None:
    """The member's path parts, or None when the name could point outside the zip's folder."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = tuple(part for part in PurePosixPath(name).parts if part not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


def open_zip(path: str | Path) -> zipfile.ZipFile:
    """Open the upload as a zip.

    Raises:
        DatasetError: not a readable zip file.
    """
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise DatasetError(
            f"{Path(path).name!r} is not a readable zip file. Put the images (and captions) in a folder, "
            "zip it (for example `zip -r dataset.zip images captions config.json`) and upload the .zip."
        ) from None


def read_members(archive: zipfile.ZipFile, *, limits: ZipLimits, skipped: list[Skipped], notes: list[str]) -> Iterator[Member]:
    """Yield the usable members of `archive` with their bytes, in the zip's order.

    Args:
        archive: an open zip.
        limits: the bounds; past `max_total_bytes` the rest of the zip is not read (noted).
        skipped: receives an entry for each member that is refused, with the reason.
        notes: receives a line for what is ignored in bulk (macOS and hidden files).

    Raises:
        DatasetError: the zip lists more members than `limits.max_members`.
    """
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise DatasetError(
            f"The zip holds {len(infos):,} entries; at most {limits.max_members:,} are read. "
            "Upload only the images, their captions and config.json."
        )
    total = 0
    junk = 0
    for info in infos:
        # 1. Names: folders pass silently, junk is counted, unsafe names are refused.
        if info.is_dir():
            continue
        parts = safe_parts(info.filename)
        shown = display_name(info.filename)
        if parts is None:
            skipped.append(Skipped(shown, "unsafe name (absolute, `..` or a drive): not read"))
            continue
        if is_junk(parts):
            junk += 1
            continue
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            skipped.append(Skipped(shown, "symbolic link: not followed"))
            continue
        if info.flag_bits & 0x1:
            skipped.append(Skipped(shown, "encrypted: zip it again without a password"))
            continue
        if parts[-1].lower().endswith(ARCHIVE_SUFFIXES):
            skipped.append(Skipped(shown, "an archive inside the zip: unpack it and zip its files with the rest"))
            continue
        # 2. Sizes: what the header says, then what is really read.
        if info.file_size > limits.max_member_bytes:
            skipped.append(Skipped(shown, f"{info.file_size / 2**20:.0f} MiB uncompressed, over the {limits.max_member_bytes / 2**20:.0f} MiB limit per file"))
            continue
        remaining = limits.max_total_bytes - total
        over_total = f"The zip holds more than {limits.max_total_bytes / 2**20:.0f} MiB uncompressed; {shown!r} and the files after it were not read."
        if info.file_size > remaining:
            notes.append(over_total)
            break
        data, problem = _read_bounded(archive, info, min(limits.max_member_bytes, remaining))
        if data is None and remaining < limits.max_member_bytes and problem.startswith("inflates"):
            notes.append(over_total)
            break
        total += len(data) if data is not None else 0
        if problem:
            skipped.append(Skipped(shown, problem))
            continue
        yield Member(parts, data)
    if junk:
        notes.append(f"Ignored {junk} hidden or macOS metadata file(s) (`__MACOSX/`, dotfiles).")


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> tuple[bytes | None, str]:
    """Read one member, stopping once `budget` bytes came out; returns (data, problem)."""
    chunks = []
    size = 0
    try:
        with archive.open(info) as stream:
            while True:
                chunk = stream.read(min(CHUNK, budget + 1 - size))
                if not chunk:
                    break
                size += len(chunk)
                if size > budget:
                    return None, f"inflates past the limit of {budget / 2**20:.1f} MiB: not read"
                chunks.append(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error):
        return None, "damaged: its sizes or checksum do not match its data"
    except NotImplementedError:
        return None, "compressed with a method Python's zipfile cannot read: zip it again with the usual deflate"
    except RuntimeError:
        return None, "encrypted: zip it again without a password"
    except OSError as error:
        return None, f"cannot be read ({error.strerror or type(error).__name__})"
    return b"".join(chunks), ""
