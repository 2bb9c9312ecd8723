"""What `/training_status` returns for a job (`JobStatus`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class JobStatus:
    """What `/training_status` returns (`to_dict`), plus queue position, ETA and warnings."""

    job_id: str
    state: str
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
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["samples"] = [str(path) for path in self.samples]
        values["checkpoints"] = [str(path) for path in self.checkpoints]
        values["lora_file"] = str(self.lora_file) if self.lora_file else None
        return values
