"""Disk bounds that no visitor identity resets (README "Settings"; the visitor quota is `cleanup.check_quota`).

A visitor identity costs nothing on a public Space (each new `gradio_client.Client` is a new
visitor with a quota of its own), so the disk also has bounds of its own, for all visitors
together:

- a free-disk floor: nothing is written while the data folder's disk has less free space than
  `Storage.min_free_bytes` (`check_write`);
- a write budget: calls write at most `Storage.write_bytes_per_hour` in any hour (`check_write`
  before, `record_write` after); the ledger is a file in the data folder, so a restart does not
  reset it and a refusal says when to come back;
- size bounds on call outputs (`Storage.outputs_bytes`) and on the Hub cache's downloads
  (`Storage.hub_cache_bytes`), kept by deleting the least recently used first
  (`evict_outputs`, `evict_hub_cache`); the base model's repo and the shared library are never
  touched.

A local run is one user on their own disk: none of these apply there.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LimitError
from .settings import Settings

logger = logging.getLogger(__name__)

OUTPUTS = "outputs"
LEDGER = Path("cache") / "writes.log"  # one line per write: "<unix time> <bytes>"
HUB_DOWNLOADS = Path("cache") / "hub_downloads.txt"  # the Hub repos this app downloaded into the Hub cache, one a line
WINDOW_S = 3600
PRUNE_AT_BYTES = 64 * 1024  # the ledger is rewritten without lines older than the window past this size


def _mb(size: float) -> str:
    return f"{size / 2**20:,.1f} MB" if size < 10 * 2**20 else f"{size / 2**20:,.0f} MB"


def _ledger(settings: Settings) -> Path:
    return settings.data_dir / LEDGER


def _recent_writes(settings: Settings, now: float) -> list[tuple[float, int]]:
    """(time, bytes) of the writes of the last hour, oldest first."""
    try:
        lines = _ledger(settings).read_text().splitlines()
    except FileNotFoundError:
        return []
    writes = []
    for line in lines:
        moment, _, size = line.partition(" ")
        try:
            entry = (float(moment), int(size))
        except ValueError:
            continue
        if now - entry[0] < WINDOW_S:
            writes.append(entry)
    return sorted(writes)


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds `path` (its nearest existing folder)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_write(settings: Settings, incoming_bytes: int = 0, *, where: Path | None = None, now: float | None = None) -> None:
    """Refuse a write of about `incoming_bytes` past the free-disk floor or the hour's write budget.

    Args:
        settings: the data folder and `settings.storage`'s bounds.
        incoming_bytes: what the call is about to write, when known (0: only check that room is left).
        where: the folder written to, when not on the data folder's disk (the Hub cache).
        now: the time (tests pass one).

    Raises:
        LimitError: the disk is at its floor, or the budget of the last hour is spent; the
            message says when the budget allows the write again.
    """
    if not settings.on_space:
        return
    storage, now = settings.storage, time.time() if now is None else now
    # 1. The free-disk floor, on each disk the call writes to.
    for folder in {settings.data_dir, where or settings.data_dir}:
        free = free_bytes(folder)
        if free - incoming_bytes < storage.min_free_bytes:
            raise LimitError(
                f"This Space's disk is nearly full ({_mb(free)} free, and it keeps at least {_mb(storage.min_free_bytes)} "
                "free), so nothing new is written now; try again later, after its cleaner has made room."
            )
    # 2. The write budget of the last hour, for all visitors together.
    budget = storage.write_bytes_per_hour
    if incoming_bytes > budget:
        raise LimitError(f"This call would write {_mb(incoming_bytes)}, more than the {_mb(budget)} this Space writes in an hour; make it smaller.")
    def fits(spent: int) -> bool:
        return spent + incoming_bytes <= budget if incoming_bytes else spent < budget

    writes = _recent_writes(settings, now)
    spent = sum(size for _, size in writes)
    if fits(spent):
        return
    freed, wait = 0, WINDOW_S
    for moment, size in writes:  # the budget comes back as the oldest writes leave the hour
        freed += size
        if fits(spent - freed):
            wait = moment + WINDOW_S - now
            break
    minutes = max(1, round(wait / 60))
    this_call = f", and this call would write {_mb(incoming_bytes)} more" if incoming_bytes else ""
    raise LimitError(
        f"This Space has written {_mb(spent)} in the last hour{this_call}: its limit is {_mb(budget)} an hour for all visitors "
        f"together. Come back in about {minutes} minute{'s' if minutes != 1 else ''} ({time.strftime('%H:%M UTC', time.gmtime(now + wait))})."
    )


def record_write(settings: Settings, size: int, *, now: float | None = None) -> None:
    """Count `size` bytes written now against the hour's budget (see `check_write`)."""
    if not settings.on_space or size <= 0:
        return
    now = time.time() if now is None else now
    path = _ledger(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as ledger:
        fcntl.flock(ledger, fcntl.LOCK_EX)  # writers in other threads and processes wait
        ledger.write(f"{now:.3f} {int(size)}\n")
        ledger.flush()
        if ledger.tell() > PRUNE_AT_BYTES:
            kept = [f"{moment:.3f} {count}\n" for moment, count in _recent_writes(settings, now)]
            ledger.seek(0)
            ledger.truncate()
            ledger.writelines(kept)


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path`, each file once (hard links) and symlinks not followed."""
    total, seen = 0, set()
    paths = [path] if path.is_symlink() or path.is_file() else (Path(root) / name for root, _, names in os.walk(path) for name in names)
    for file in paths:
        try:
            stat = file.lstat()
        except OSError:
            continue
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total


@contextmanager
def output_folder(settings: Settings) -> Iterator[Path]:
    """A fresh `outputs/<random id>` folder for one call's files, named so that only its caller finds it.

    The disk bounds are checked first (`check_write`); what the call wrote there is counted
    (`record_write`) when it ends, also when it fails.

    Raises:
        LimitError: see `check_write`.
    """
    check_write(settings)
    folder = settings.data_dir / OUTPUTS / uuid.uuid4().hex
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        record_write(settings, tree_bytes(folder))


def _last_used(path: Path) -> float:
    """The latest access or change of `path` or a file under it."""
    times = []
    for file in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
        try:
            stat = file.lstat()
        except OSError:
            continue
        times.append(max(stat.st_atime, stat.st_mtime))
    return max(times, default=0.0)


def evict_outputs(settings: Settings) -> list[str]:
    """Delete call outputs, least recently used first, until they hold at most `Storage.outputs_bytes`.

    Returns:
        the folders removed (names under `outputs/`).
    """
    root = settings.data_dir / OUTPUTS
    if not settings.on_space or not root.is_dir():
        return []
    folders = [(_last_used(folder), tree_bytes(folder), folder) for folder in root.iterdir() if not folder.is_symlink()]
    total, removed = sum(size for _, size, _ in folders), []
    for _, size, folder in sorted(folders, key=lambda item: item[0]):
        if total <= settings.storage.outputs_bytes:
            break
        shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)
        total -= size
        removed.append(folder.name)
    if removed:
        logger.info("evicted %d output folders (least recently used) to stay within %s", len(removed), _mb(settings.storage.outputs_bytes))
    return removed


def note_hub_download(settings: Settings, repo_id: str) -> None:
    """Remember that this app downloaded files of `repo_id` into the Hub cache (`evict_hub_cache`)."""
    path = settings.data_dir / HUB_DOWNLOADS
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as downloads:
        fcntl.flock(downloads, fcntl.LOCK_EX)
        downloads.write(repo_id + "\n")


def evict_hub_cache(settings: Settings, *, keep: set[str] = frozenset(), cache_dir: Path | None = None) -> list[str]:
    """Delete model repos this app downloaded (`note_hub_download`) from the Hub cache, least
    recently used first, until they hold at most `Storage.hub_cache_bytes`.

    Never evicted: the base model's repo, the repos in `keep` (a download in use), any repo this
    app did not download (another program's models in a shared cache), other repo types, and
    anything outside the Hub cache (the shared library is a folder of its own).

    Returns:
        the repo ids removed.
    """
    try:
        ours = set((settings.data_dir / HUB_DOWNLOADS).read_text().split())
    except FileNotFoundError:
        return []
    if not settings.on_space or not ours:
        return []
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(cache_dir or constants.HF_HUB_CACHE)
    except CacheNotFound:
        return []
    mine = [repo for repo in cache.repos if repo.repo_type == "model" and repo.repo_id in ours - {settings.base_model}]
    total, removed = sum(repo.size_on_disk for repo in mine), []
    for repo in sorted((repo for repo in mine if repo.repo_id not in keep), key=lambda item: max(item.last_accessed, item.last_modified)):
        if total <= settings.storage.hub_cache_bytes:
            break
        cache.delete_revisions(*(revision.commit_hash for revision in repo.revisions)).execute()
        total -= repo.size_on_disk
        removed.append(repo.repo_id)
    if removed:
        logger.info("evicted %d Hub repos (least recently used) to stay within %s", len(removed), _mb(settings.storage.hub_cache_bytes))
    return removed
