"""Training jobs on the tiny model: start, follow, finish into the library, generate unchanged during
a job, cancel within a step, restart -> interrupted -> resume, and ownership."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_space.core.errors import DatasetError, JobError, TrainConfigError
from lora_space.lora.safefile import load_lora_file
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.train.jobs import JobManager
from lora_space.train.trainer import run_chunk
from lora_space.visitors.owners import Visitor
from tests.train_factory import ALICE, RUN, TINY, job_folder, wait_for_job


@pytest.fixture
def space(make_space):
    """A space whose training jobs run in chunks of 3 steps."""
    return make_space(chunk_steps=3)


BOB = Visitor("browser", "b" * 32)


def pixels(output) -> np.ndarray:
    return np.asarray(Image.open(output.files[0]).convert("RGB"), dtype=np.int16)


@pytest.mark.slow  # about 20 s: 24 steps, generating between chunks
def test_a_job_trains_into_the_library_while_generate_stays_the_same(space, red_zip):
    before = pixels(space.generate("a lighthouse", [], TINY, visitor=ALICE))
    status = space.jobs.start(red_zip, RUN | {"max_train_steps": 24}, visitor=ALICE)
    assert status.state in ("queued", "running") and len(status.job_id) == 32
    assert status.dataset_report["images_used"] == 6
    # One job per visitor; another visitor's job waits in the queue with its place shown.
    with pytest.raises(JobError, match="already have a training job"):
        space.jobs.start(red_zip, RUN, visitor=ALICE)
    queued = space.jobs.start(red_zip, RUN | {"max_train_steps": 3}, visitor=BOB)
    assert queued.state == "queued" and queued.queue_position == 1
    # Between chunks a generation runs and gives the same image as before the job.
    during = []

    def generate(current) -> None:
        image = pixels(space.generate("a lighthouse", [], TINY, visitor=ALICE))
        if 0 < current.step < current.total_steps and space.jobs.status(status.job_id).state == "running":
            during.append(np.array_equal(image, before))
        assert current.state in ("queued", "running"), current.error

    wait_for_job(space, status.job_id, ("done",), timeout=600, meanwhile=generate)
    assert during and all(during)
    done = space.jobs.status(status.job_id)
    assert done.step == 24 and done.loss[-1][0] == 24 and np.isfinite([v for _, v in done.loss]).all()
    assert done.samples and done.lora_file.exists() and done.eta_seconds is None
    folder = space.jobs.root / done.job_id
    assert not (folder / "state").exists() and not (folder / "cache").exists()  # only what a user keeps
    assert np.array_equal(pixels(space.generate("a lighthouse", [], TINY, visitor=ALICE)), before)
    # The LoRA joined Alice's library; its name is a Generate source and changes the image.
    names = [entry["name"] for entry in space.list_loras(visitor=ALICE)]
    assert done.lora_name in names and done.lora_name.startswith("redstyle_")
    styled = space.generate("a lighthouse", [{"source": done.lora_name, "strength": 1.0}], TINY, visitor=ALICE)
    assert not np.array_equal(pixels(styled), before)
    assert styled.metadata["prompt"].startswith("redstyle")  # its trigger word came along
    # Bob sees only his own job; a made-up id is "no such job".
    assert [job.job_id for job in space.jobs.list_jobs(BOB)] == [queued.job_id]
    assert [job.job_id for job in space.jobs.list_jobs(ALICE)] == [status.job_id]
    for made_up in ("0" * 32, "../../etc", ""):
        with pytest.raises(JobError, match="no such job"):
            space.jobs.status(made_up)
    wait_for_job(space, queued.job_id, ("done",), timeout=60)


def test_cancel_stops_within_one_step_and_the_job_resumes_to_the_end(space, red_zip):
    status = space.jobs.start(red_zip, RUN | {"max_train_steps": 400}, visitor=ALICE)
    seen = wait_for_job(space, status.job_id, until=lambda job: job.step >= 4, timeout=60).step
    cancelled = space.jobs.cancel(status.job_id)
    assert cancelled.state == "cancelled"
    assert cancelled.step <= seen + 2  # the step running at the call (and one whose record was in flight)
    with pytest.raises(JobError, match="Only the visitor who started"):
        space.jobs.resume(status.job_id, visitor=BOB)
    space.jobs.start(red_zip, RUN | {"max_train_steps": 2}, visitor=BOB)  # others can train meanwhile
    resumed = space.jobs.resume(status.job_id, visitor=ALICE)
    assert resumed.state in ("queued", "running")
    space.jobs.cancel(status.job_id)


def test_after_a_restart_a_job_is_interrupted_and_resumes_to_the_same_weights(space, settings, red_zip, tmp_path):
    config = RUN | {"max_train_steps": 12, "checkpoint_every": 3}
    status = space.jobs.start(red_zip, config, visitor=ALICE)
    wait_for_job(space, status.job_id, until=lambda job: job.step >= 4, timeout=60)
    space.jobs.close()  # the app stops: the worker ends within a step, the state stays "running"
    restarted = JobManager(space.settings, space.engine, add_lora=space.add_lora, chunk_steps=5)
    space.jobs = restarted
    assert restarted.status(status.job_id).state == "interrupted"
    assert [job.state for job in restarted.list_jobs(ALICE)] == ["interrupted"]
    restarted.resume(status.job_id, visitor=ALICE)
    done = wait_for_job(space, status.job_id, ("done", "failed"), timeout=60)
    assert done.state == "done", done.error
    assert len(done.checkpoints) == 3 and all(path.exists() for path in done.checkpoints)
    # An uninterrupted run of the same config gives the same weights, exactly.
    reference = job_folder(tmp_path / "reference", red_zip, **config)
    run_chunk(build_tiny_pipeline(), reference.root, adapter_name="reference")
    expected, _ = load_lora_file(reference.final)
    got, _ = load_lora_file(done.lora_file)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_bad_input_is_refused_at_the_call_and_leaves_no_job(space, red_zip, tmp_path):
    not_a_zip = tmp_path / "photos.zip"
    not_a_zip.write_bytes(b"these are not zip bytes")
    with pytest.raises(DatasetError):
        space.jobs.start(not_a_zip, RUN, visitor=ALICE)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "no images")
    with pytest.raises(DatasetError, match="no usable image"):
        space.jobs.start(empty, RUN, visitor=ALICE)
    with pytest.raises(TrainConfigError, match="learning_rate"):
        space.jobs.start(red_zip, RUN | {"learning_rate": -1}, visitor=ALICE)
    with pytest.raises(TrainConfigError, match="'epochs_please'"):
        space.jobs.start(red_zip, RUN | {"epochs_please": 3}, visitor=ALICE)
    assert not list((space.settings.data_dir / "jobs").glob("*"))


def test_the_example_zip_trains_with_its_own_config_into_a_lora_that_changes_the_image(space):
    example = Path(__file__).resolve().parents[2] / "examples" / "flat_shapes.zip"
    status = space.jobs.start(example, {}, visitor=ALICE)  # the zip's config.json: 200 steps at 64 px, AdamW8bit
    assert status.config.max_train_steps == 200 and status.config.optimizer_type == "AdamW"  # no bitsandbytes here
    assert any("AdamW8bit" in warning for warning in status.warnings)
    done = wait_for_job(space, status.job_id, ("done", "failed"), timeout=180)
    assert done.state == "done", done.error
    losses = [value for _, value in done.loss]
    assert np.isfinite(losses).all() and len(losses) == 200
    # The per-step loss is noisy (a random timestep each step); the validation loss uses the same
    # noise every time, and it is lower at the end.
    assert [step for step, _ in done.val_loss] == [100, 200] and done.val_loss[1][1] < done.val_loss[0][1]
    assert len(done.samples) == 4  # strength 0 and 1 at steps 100 and 200
    base = pixels(space.generate("flatshape_style, a circle", [], TINY, visitor=ALICE))
    styled = pixels(space.generate("a circle", [{"source": done.lora_name, "strength": 1.0}], TINY, visitor=ALICE))
    # On this random tiny model the image changes (on the drawing one the shapes get black marks: tests/tiny/test_draw.py).
    assert not np.array_equal(styled, base) and np.abs(styled - base).max() >= 3
