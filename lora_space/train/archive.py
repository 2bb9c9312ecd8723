"""Reading a dataset zip that nobody checked, one member at a time, within fixed bounds.

Nothing is extracted with `extractall`: each member's name is checked (no `../`, no absolute
names, no symbolic links), encrypted members, nested archives and members compressed other than
stored or deflate are skipped, and every byte inflated counts against the limits as it is read,
also the bytes of a member that then fails its checksum, so a header that lies about sizes or
checksums cannot make the app inflate more than the limits. Every skipped member becomes a
`Skipped` entry with its reason.
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
# Stored and deflate are what every zip tool writes by default; bzip2 and LZMA inflate far slower
# (a 39 KB zip of bzip2 members took 48 s of CPU per GiB-scale read), so they are not read.
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA", 9: "deflate64", 93: "zstandard", 95: "xz", 98: "PPMd"}


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


@dataclass
class ReadStats:
    """What reading a zip cost: bytes inflated (every member read, damaged or not) and members read."""

    inflated_bytes: int = 0
    members_read: int = 0


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


def read_members(
    archive: zipfile.ZipFile, *, limits: ZipLimits, skipped: list[Skipped], notes: list[str], stats: ReadStats | None = None
) -> Iterator[Member]:
    """Yield the usable members of `archive` with their bytes, in the zip's order.

    Args:
        archive: an open zip.
        limits: the bounds; past `max_total_bytes` inflated (members that fail their checks
            included) the rest of the zip is not read (noted).
        skipped: receives an entry for each member that is refused, with the reason.
        notes: receives a line for what is ignored in bulk (macOS and hidden files).
        stats: receives the bytes inflated and the members read.

    Raises:
        DatasetError: the zip lists more members than `limits.max_members`.
    """
    stats = ReadStats() if stats is None else stats
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
        if info.compress_type not in METHODS:
            method = METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            skipped.append(Skipped(shown, f"compressed with {method}: only stored and deflate members are read; zip it again with the usual deflate"))
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
        data, problem, inflated = _read_bounded(archive, info, min(limits.max_member_bytes, remaining))
        total += inflated  # every byte inflated counts, also those of a member that then failed its checksum
        stats.inflated_bytes, stats.members_read = total, stats.members_read + 1
        if data is None and remaining < limits.max_member_bytes and problem.startswith("inflates"):
            notes.append(over_total)
            break
        if problem:
            skipped.append(Skipped(shown, problem))
            continue
        yield Member(parts, data)
    if junk:
        notes.append(f"Ignored {junk} hidden or macOS metadata file(s) (`__MACOSX/`, dotfiles).")


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> tuple[bytes | None, str, int]:
    """Read one member, stopping once `budget` bytes came out; returns (data, problem, bytes inflated).

    zipfile inflates a member up to its declared size and checks the checksum only then, and a
    failed read hands back none of its last chunk: a member that fails counts as its declared
    size (at most the budget), which is at least what was inflated.
    """
    chunks = []
    read = 0
    problem = ""
    try:
        with archive.open(info) as stream:
            while True:
                chunk = stream.read(min(CHUNK, budget + 1 - read))
                if not chunk:
                    break
                read += len(chunk)
                if read > budget:
                    return None, f"inflates past the limit of {budget / 2**20:.1f} MiB: not read", read
                chunks.append(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error):
        problem = "damaged: its sizes or checksum do not match its data"
    except NotImplementedError:
        problem = "compressed with a method Python's zipfile cannot read: zip it again with the usual deflate"
    except RuntimeError:
        problem = "encrypted: zip it again without a password"
    except OSError as error:
        problem = f"cannot be read ({error.strerror or type(error).__name__})"
    if problem:
        return None, problem, max(read, min(info.file_size, budget + 1))
    return b"".join(chunks), "", read
