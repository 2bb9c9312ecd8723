"""`/start_training`, `/training_status`, `/cancel_training`, `/resume_training` (API.md), made with `gr.api`.

Files (samples, checkpoints, the LoRA) go out as `gr.FileData`, so `gradio_client` downloads
them; they live in the job's folder, whose random id is the only way to name them.

`/start_training` and `/resume_training` stream the job's status (`JobManager.follow`): off
ZeroGPU they send it once, at once, and the job trains in the background; on ZeroGPU the job
trains inside the caller's request, so the caller's GPU quota pays, and the stream goes on
until the job ends (the job pauses when the caller disconnects; `/resume_training` goes on).
"""

from __future__ import annotations

from collections.abc import Iterator
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
    """Register the four training endpoints (call inside the demo's Blocks)."""

    @api_errors
    def start_training(dataset: gr.FileData, config: dict | None = None, request: gr.Request = None) -> Iterator[dict]:
        """Train a LoRA from a zip of images and captions; the job's id comes at once.

        Off ZeroGPU the status is sent once and the job trains in the background (follow it with
        /training_status). On ZeroGPU the job trains inside this call, which streams its status
        after each chunk until it ends (use `client.submit(...)` to read them as they come); if the
        caller disconnects, the job pauses and /resume_training goes on with it.

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
        for _ in space.jobs.follow(status.job_id):
            yield status_dict(space, status.job_id)

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
        """Stop a training job within one step; its last saved state is kept (/resume_training goes on from it).

        Args:
            job_id: the id /start_training returned.
        Returns:
            the status after cancelling.
        """
        space.jobs.cancel(job_id)
        return status_dict(space, job_id)

    @api_errors
    def resume_training(job_id: str, request: gr.Request = None) -> Iterator[dict]:
        """Resume your cancelled or interrupted (or failed) job from its last saved state; it ends with
        the weights an uninterrupted run has. Only the session that started the job may resume it.

        Streams the status as /start_training does: once off ZeroGPU, chunk after chunk on ZeroGPU.

        Args:
            job_id: the id /start_training returned.
        Returns:
            the status after resuming (`queued` or `running`).
        """
        space.jobs.resume(job_id, visitor=visitor_of(space.settings, request))
        for _ in space.jobs.follow(job_id):
            yield status_dict(space, job_id)

    # Reading a zip is CPU work: at most `dataset_calls` at once, shared with the Train tab's upload and Start
    # (on ZeroGPU the call then streams its job's training, holding its place). Resuming reads no zip.
    gr.api(start_training, api_name="start_training", concurrency_id=DATASET_CALLS, concurrency_limit=space.settings.limits.dataset_calls)
    gr.api(training_status, api_name="training_status")
    gr.api(cancel_training, api_name="cancel_training")
    gr.api(resume_training, api_name="resume_training", concurrency_limit=None)
