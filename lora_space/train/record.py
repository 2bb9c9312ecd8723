"""A job's record on disk (`jobs/<id>/job.json`): read, written, listed, and marked at start."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from lora_space.core.errors import JobError
from lora_space.train.checkpoint import JobFiles, read_json, write_json
from lora_space.train.status import ACTIVE, JobState

JOB_ID = re.compile(r"[0-9a-f]{32}")
RECORD = "job.json"


def load_record(root: Path, job_id: str) -> tuple[JobFiles, dict]:
    """The job's files and its record.

    Raises:
        JobError: not a job id, or no such job under `root`.
    """
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id.strip()):
        raise JobError(f"There is no such job: {str(job_id)[:40]!r}. Use the job_id that /start_training returned.")
    files = JobFiles(root / job_id.strip())
    state = read_json(files.root / RECORD)
    if state is None:
        raise JobError(f"There is no such job: {job_id!r}. Use the job_id that /start_training returned.")
    return files, state


def write_record(files: JobFiles, state: dict) -> None:
    write_json(files.root / RECORD, state)


def records(root: Path) -> Iterator[tuple[Path, dict]]:
    """Every job record under `root` (its path and contents)."""
    for path in root.glob(f"*/{RECORD}") if root.exists() else []:
        yield path, read_json(path, {}) or {}


def mark_interrupted(root: Path) -> None:
    """At start: jobs that were queued or running when the app stopped are interrupted."""
    for path, state in records(root):
        if state.get("state") in ACTIVE:
            state["state"] = JobState.INTERRUPTED
            write_json(path, state)
