"""A job's state (`JobState`) and what `/training_status` returns for it (`JobStatus`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from lora_space.train.checkpoint import JobFiles, read_json, state_step
from lora_space.train.config import TrainConfig


class JobState(StrEnum):
    """Where a job is; its value is the `state` string of `job.json` and of the API."""

    QUEUED = "queued"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    FAILED = "failed"
    DONE = "done"


ACTIVE = (JobState.QUEUED, JobState.RUNNING)
"""States that hold a place: one per visitor, `Training.max_jobs` per Space."""
RESUMABLE = (JobState.INTERRUPTED, JobState.CANCELLED, JobState.FAILED)


@dataclass
class JobStatus:
    """What `/training_status` returns (`to_dict`), plus queue position, ETA and warnings."""

    job_id: str
    state: JobState
    step: int = 0
    total_steps: int = 0
    loss: list[list[float]] = field(default_factory=list)
    val_loss: list[list[float]] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    lora_file: Path | None = None
    lora_name: str = ""
    dataset_report: dict = field(default_factory=dict)
    error: str = ""
    queue_position: int = 0  # 1 = next; 0 when not queued
    eta_seconds: float | None = None
    warnings: list[str] = field(default_factory=list)
    config: TrainConfig | None = None  # the job's settings as it trains with them

    def to_dict(self) -> dict:
        values = asdict(self)
        values["state"] = str(self.state)
        values["config"] = self.config.to_dict() if self.config is not None else {}
        values["samples"] = [str(path) for path in self.samples]
        values["checkpoints"] = [str(path) for path in self.checkpoints]
        values["lora_file"] = str(self.lora_file) if self.lora_file else None
        return values


def job_status(files: JobFiles, state: dict, *, position: int = 0, steps_ahead: int = 0) -> JobStatus:
    """A job's status from its record and its folder.

    Args:
        files: the job's folder.
        state: its record (`job.json`).
        position: its place in the queue (1 = next; 0 when not queued).
        steps_ahead: the steps of the jobs before it, for its ETA.
    """
    progress = read_json(files.progress, {}) or {}
    step = progress.get("step", 0)
    if state["state"] == JobState.INTERRUPTED:  # killed between saving its state and its progress: the state is the truth
        step = max([step] + [found for path in files.states.glob("step_*") if (found := state_step(path)) is not None])
    per_step = progress.get("seconds_per_step")
    eta = per_step * (state["total_steps"] - step + steps_ahead) if per_step and state["state"] in ACTIVE else None
    lora_file = Path(state["lora_file"]) if state.get("lora_file") else None
    return JobStatus(
        job_id=files.root.name, state=JobState(state["state"]), step=step, total_steps=state["total_steps"],
        loss=progress.get("loss", []), val_loss=progress.get("val_loss", []),
        samples=[files.samples / name for name in progress.get("samples", [])],
        checkpoints=[files.checkpoints / name for name in progress.get("checkpoints", [])],
        lora_file=lora_file, lora_name=state.get("lora_name", ""),
        dataset_report=read_json(files.root / "report.json", {}), error=state.get("error", ""),
        queue_position=position, eta_seconds=round(eta, 1) if eta is not None else None,
        warnings=list(state.get("notes", [])) + progress.get("warnings", []),
        config=TrainConfig(**read_json(files.config)) if files.config.exists() else None,
    )  # fmt: skip
