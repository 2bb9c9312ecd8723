"""Disk bounds: what a visitor may keep, and the cleaner that removes what has aged.

API.md "Who owns what": a visitor's area has a size quota and an age limit, and is cleaned
on a schedule; the shared library and the Hub cache are never deleted by it. This module
cleans these folders and nothing else:

- `outputs/<random id>/`: the files one call returned (images, zips, converted LoRAs),
  deleted whole once their newest file is older than `Storage.output_max_age_s`;
- `visitors/<id>/`: what a Space's visitor added, deleted entry by entry (a LoRA with its
  sidecars, a folder) once untouched for `Storage.visitor_max_age_s`;
- `jobs/<job id>/` on a Space: a finished, cancelled or failed training job, once untouched for
  `Storage.visitor_max_age_s` (queued, running and interrupted jobs never; a local run's never);
- `previews/<visitor id>/<random id>/`: the Train tab's dataset previews (`train.preview`), aged as outputs;
- then, on a Space, outputs and the Hub cache down to their size bounds, least recently used
  first (`disk.evict_outputs`, `disk.evict_hub_cache`; never the base model or the shared library).

A visitor's quota (`check_quota`) counts their area, their training jobs (dataset included) and
their previews.

Gradio keeps its own copy of every returned and uploaded file; `build_demo` hands
`gradio_delete_cache(settings)` to `gr.Blocks(delete_cache=...)` so that copy ages out too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lora_space.core.errors import LimitError
from lora_space.core.settings import Settings
from lora_space.visitors.disk import OUTPUTS, evict_hub_cache, evict_outputs, tree_bytes
from lora_space.visitors.owners import Visitor, visitor_area

logger = logging.getLogger(__name__)

VISITORS = "visitors"
JOBS = "jobs"
PREVIEWS = "previews"
LEGACY_PREVIEWS = "lora-space-previews"  # earlier versions kept previews in the temp folder
FINISHED_JOB_STATES = ("done", "cancelled", "failed")  # queued, running and interrupted jobs are never cleaned


def preview_root(settings: Settings) -> Path:
    """The Train tab's dataset previews: `data_dir/previews/<visitor id>/<random id>` (`train.preview`)."""
    return settings.data_dir / PREVIEWS


@dataclass
class CleanReport:
    """What one cleaning pass removed."""

    removed: list[str] = field(default_factory=list)  # paths relative to the data folder
    freed_bytes: int = 0


def _files(path: Path) -> Iterator[Path]:
    if path.is_symlink() or path.is_file():
        yield path
        return
    for root, _, names in os.walk(path, followlinks=False):
        for name in names:
            yield Path(root) / name


def _newest(path: Path) -> float:
    """The latest change under `path` (the path itself when empty)."""
    times = [path.lstat().st_mtime]
    for file in _files(path):
        try:
            times.append(file.lstat().st_mtime)
        except OSError:
            continue
    return max(times)


def _protected(settings: Settings) -> list[Path]:
    """Folders the cleaner never deletes, even when they sit inside the data folder."""
    from huggingface_hub import constants

    return [settings.lora_dir.resolve(), Path(constants.HF_HUB_CACHE).resolve(), Path(constants.HF_HOME).resolve()]


def _remove(entry: Path, settings: Settings, report: CleanReport) -> None:
    resolved = entry.resolve() if not entry.is_symlink() else entry.parent.resolve() / entry.name
    if any(resolved == keep or keep.is_relative_to(resolved) or resolved.is_relative_to(keep) for keep in _protected(settings)):
        return
    size = tree_bytes(entry)
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except OSError as error:
        logger.warning("cleanup could not remove %s: %s", entry.name, error.strerror or type(error).__name__)
        return
    report.removed.append(entry.relative_to(settings.data_dir).as_posix())
    report.freed_bytes += size


def _visitor_entries(area: Path) -> Iterator[Path]:
    """The units a visitor's area is cleaned by: each file or folder inside its first-level folders."""
    for child in area.iterdir():
        if child.is_dir() and not child.is_symlink():
            yield from child.iterdir()
        else:
            yield child


def clean(settings: Settings, *, now: float | None = None) -> CleanReport:
    """One cleaning pass: aged call outputs and aged visitor files.

    Args:
        settings: the data folder and the ages (`settings.storage`).
        now: the time to measure ages from (tests pass one); `time.time()` by default.

    Returns:
        what was removed and how many bytes that freed.
    """
    now = time.time() if now is None else now
    storage, report = settings.storage, CleanReport()
    # 1. Call outputs: one folder per call, deleted whole.
    outputs = settings.data_dir / OUTPUTS
    if outputs.is_dir():
        for folder in outputs.iterdir():
            if now - _newest(folder) > storage.output_max_age_s:
                _remove(folder, settings, report)
    # 2. Visitors' areas: entry by entry (a LoRA goes with its sidecars), then empty areas.
    visitors = settings.data_dir / VISITORS
    if visitors.is_dir():
        for area in visitors.iterdir():
            if not area.is_dir() or area.is_symlink():
                continue
            entries = list(_visitor_entries(area))
            aged = {entry for entry in entries if now - _newest(entry) > storage.visitor_max_age_s}
            for entry in entries:
                siblings = [other for other in entries if other.parent == entry.parent and other.stem == entry.stem]
                if entry in aged and all(other in aged for other in siblings):
                    _remove(entry, settings, report)
            for folder in sorted(area.rglob("*"), reverse=True):
                if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                    folder.rmdir()
            if not any(area.iterdir()):
                area.rmdir()
    # 3. Training jobs on a Space: finished, cancelled or failed ones, once untouched for the visitor age.
    #    A local run's jobs are its one user's and are never deleted.
    jobs = settings.data_dir / JOBS
    if settings.on_space and jobs.is_dir():
        for folder in jobs.iterdir():
            finished = folder.is_dir() and not folder.is_symlink() and _job_state(folder) in (*FINISHED_JOB_STATES, None)
            if finished and now - _newest(folder) > storage.visitor_max_age_s:
                _remove(folder, settings, report)
    # 4. The Train tab's dataset previews, aged as call outputs are (also those earlier versions left in the temp folder).
    for previews in (preview_root(settings), Path(tempfile.gettempdir()) / LEGACY_PREVIEWS):
        if not previews.is_dir() or previews.is_symlink():
            continue
        for folder in previews.glob("*/*"):
            if not folder.is_symlink() and now - _newest(folder) > storage.output_max_age_s:
                if folder.is_relative_to(settings.data_dir):
                    _remove(folder, settings, report)
                else:
                    shutil.rmtree(folder, ignore_errors=True)
        for area in previews.iterdir():
            if area.is_dir() and not area.is_symlink() and not any(area.iterdir()):
                area.rmdir()
    # 5. On a Space: outputs and the Hub cache down to their size bounds, least recently used first.
    report.removed += [f"{OUTPUTS}/{name}" for name in evict_outputs(settings)]
    report.removed += [f"hub cache: {repo}" for repo in evict_hub_cache(settings)]
    if report.removed:
        logger.info("cleanup removed %d entries, %.1f MB", len(report.removed), report.freed_bytes / 1e6)
    return report


def _job_state(folder: Path) -> str | None:
    """A job folder's state from its `job.json` (None: no readable state, e.g. a start that never completed)."""
    try:
        return str(json.loads((folder / "job.json").read_text(encoding="utf-8")).get("state"))
    except (OSError, ValueError, AttributeError):
        return None


def visitor_usage(settings: Settings, visitor: Visitor) -> int:
    """Bytes a visitor holds: their area, their training jobs (dataset, checkpoints, samples) and previews."""
    used = tree_bytes(visitor_area(settings.data_dir, visitor)) + tree_bytes(preview_root(settings) / visitor.id)
    jobs = settings.data_dir / JOBS
    for state in jobs.glob("*/job.json") if jobs.is_dir() else []:
        try:
            owner = json.loads(state.read_text(encoding="utf-8")).get("owner")
        except (OSError, ValueError, AttributeError):
            continue
        if owner == visitor.id:
            used += tree_bytes(state.parent)
    return used


def quota_left(settings: Settings, visitor: Visitor) -> int | None:
    """Bytes `visitor` may still add (None: no quota, the local user of a local run)."""
    return None if visitor.is_local else max(0, settings.storage.visitor_quota_bytes - visitor_usage(settings, visitor))


def check_quota(settings: Settings, visitor: Visitor, incoming_bytes: int) -> None:
    """Refuse adding `incoming_bytes` to what a visitor holds past `settings.storage.visitor_quota_bytes`.

    What a visitor holds is `visitor_usage`: their area, their jobs and their previews. The local
    user of a local run owns the disk and has no quota.

    Raises:
        LimitError: says how much the area holds and how to make room.
    """
    if visitor.is_local:
        return
    quota = settings.storage.visitor_quota_bytes
    used = visitor_usage(settings, visitor)
    if used + incoming_bytes > quota:
        raise LimitError(
            f"Your space on this Space holds {used / 2**20:.0f} MB of its {quota / 2**20:.0f} MB; adding "
            f"{incoming_bytes / 2**20:.0f} MB would pass it. Delete something of yours first (or publish it to the Hub)."
        )


def gradio_delete_cache(settings: Settings) -> tuple[int, int]:
    """`gr.Blocks(delete_cache=...)`: Gradio's copies of returned and uploaded files age as outputs do."""
    return (settings.storage.clean_every_s, settings.storage.output_max_age_s)


def start_cleaner(settings: Settings, *, stop: threading.Event | None = None) -> threading.Thread:
    """Run `clean` now and then every `settings.storage.clean_every_s` seconds, in a daemon thread."""
    stop = stop or threading.Event()

    def loop() -> None:
        while True:
            try:
                clean(settings)
            except Exception:  # a cleaning pass must never take the app down
                logger.exception("cleanup pass failed")
            if stop.wait(settings.storage.clean_every_s):
                return

    thread = threading.Thread(target=loop, name="lora-space-cleanup", daemon=True)
    thread.start()
    return thread
