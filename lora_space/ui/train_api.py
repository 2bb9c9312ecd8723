"""`/start_training`, `/training_status`, `/cancel_training` (API.md), made with `gr.api`.

Files (samples, checkpoints, the LoRA) go out as `gr.FileData`, so `gradio_client` downloads
them; they live in the job's folder, whose random id is the only way to name them.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..errors import DatasetError
from ..service import LoraSpace
from .errors import api_errors
from .visitors import visitor_of


DATASET_CALLS = "dataset"  # the concurrency group of every event that reads a dataset zip


def _file(path) -> gr.FileData:
    return gr.FileData(path=str(path))


def status_dict(space: LoraSpace, job_id: str) -> dict:
    """A job's status for a client: `to_dict()` with its files as Gradio file objects."""
    status = space.jobs.status(job_id)
    values = status.to_dict()
    values["samples"] = [_file(path) for path in status.samples]
    values["checkpoints"] = [_file(path) for path in status.checkpoints]
    final = space.jobs.root / status.job_id / "final.safetensors"  # the library's copy, served from the job folder
    values["lora_file"] = _file(final) if status.state == "done" and final.exists() else None
    return values


def register_train_endpoints(space: LoraSpace) -> None:
    """Register the three training endpoints (call inside the demo's Blocks)."""

    @api_errors
    def start_training(dataset: gr.FileData, config: dict | None = None, request: gr.Request = None) -> dict:
        """Train a LoRA from a zip of images and captions; returns at once with the job's id.

        Args:
            dataset: a zip: `images/` + `captions/` (+ `config.json`), `x.jpg` + `x.txt` pairs, or `metadata.jsonl`.
            config: the course's config.json names, e.g. {"max_train_steps": 800, "network_dim": 16,
                "network_alpha": 8, "learning_rate": 0.0001, "trigger_word": "mystyle"}; they win over the zip's.
        Returns:
            the job's status: {"job_id", "state", "step", "total_steps", "loss", "val_loss", "samples", "checkpoints",
            "lora_file", "lora_name", "dataset_report", "error", "queue_position", "eta_seconds", "warnings"}
        """
        path = getattr(dataset, "path", None) or (dataset.get("path") if isinstance(dataset, dict) else dataset)
        if not path or not Path(str(path)).is_file():
            raise DatasetError("No dataset file was sent; pass the zip as handle_file('dataset.zip').")
        status = space.start_training(Path(str(path)), config or {}, visitor=visitor_of(space.settings, request))  # the zip, read once
        return status_dict(space, status.job_id)

    @api_errors
    def training_status(job_id: str) -> dict:
        """A training job's progress: state, step, losses, sample images, checkpoints and, when done, the LoRA.

        Args:
            job_id: the id /start_training returned.
        Returns:
            the status as /start_training returns it; `lora_name` is usable as a `source` in /generate.
        """
        return status_dict(space, job_id)

    @api_errors
    def cancel_training(job_id: str) -> dict:
        """Stop a training job within one step; its last checkpoint is kept (resume it in the Train tab).

        Args:
            job_id: the id /start_training returned.
        Returns:
            the status after cancelling.
        """
        space.jobs.cancel(job_id)
        return status_dict(space, job_id)

    # Reading a zip is CPU work: at most `dataset_calls` at once, shared with the Train tab's upload and Start.
    gr.api(start_training, api_name="start_training", concurrency_id=DATASET_CALLS, concurrency_limit=space.settings.limits.dataset_calls)
    gr.api(training_status, api_name="training_status")
    gr.api(cancel_training, api_name="cancel_training")
