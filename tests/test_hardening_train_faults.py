"""Hardening: faults during real training jobs on the tiny model.

Out of memory mid-chunk, a full disk while a checkpoint or the training state is written, and the
app killed (SIGKILL) mid-job then started again on the same data folder. Afterwards the job says
what happened and how to go on, the pipeline holds no stray adapter and its base weights are
unchanged, generate gives the same image, every saved checkpoint and state is intact, and resume
ends with the weights of an uninterrupted run."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_space.lora import export
from lora_space.lora.safefile import load_lora_file
from lora_space.service import LoraSpace
from lora_space.tiny import build_tiny_pipeline
from lora_space.train.checkpoint import load_state
from lora_space.train.trainer import run_chunk
from tests.train_factory import ALICE, RUN, TINY, job_folder, red_zip, space, wait_for_job  # noqa: F401 (fixtures)

CONFIG = RUN | {"max_train_steps": 12, "checkpoint_every": 3}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, red_zip):
    """CONFIG trained uninterrupted in one chunk: its checkpoints and final LoRA."""
    files = job_folder(tmp_path_factory.mktemp("reference") / "job", red_zip, **CONFIG)
    run_chunk(build_tiny_pipeline(), files.root, adapter_name="reference")
    return files



def pixels(output) -> np.ndarray:
    return np.asarray(Image.open(output.files[0]).convert("RGB"), dtype=np.int16)


def base_weights(pipe) -> dict[str, torch.Tensor]:
    """The transformer's weights by their base name (a PEFT wrapper's `base_layer.` folded away)."""
    return {name.replace(".base_layer", ""): tensor.detach().clone() for name, tensor in pipe.transformer.state_dict().items()}


def assert_pipeline_clean(space: LoraSpace, before: dict[str, torch.Tensor]) -> None:
    pipe = space.engine.pipe
    assert not pipe.get_list_adapters() or not any(pipe.get_list_adapters().values())
    after = base_weights(pipe)
    assert not [name for name in after if "lora_" in name], "a stray adapter's weights"
    assert after.keys() == before.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def assert_equal_loras(path_a: Path, path_b: Path) -> None:
    first, _ = load_lora_file(path_a)
    second, _ = load_lora_file(path_b)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def assert_clean_message(text: str, settings) -> None:
    assert "Traceback" not in text and "File \"" not in text
    assert str(settings.data_dir) not in text and "/jobs/" not in text and str(Path.home()) not in text


def folder_digest(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.rglob("*")) if path.is_file()}


# -- out of memory mid-chunk -----------------------------------------------------------------


def test_out_of_memory_mid_chunk_fails_the_job_clearly_and_resume_ends_as_an_uninterrupted_run(space, settings, red_zip, reference):
    before_image = pixels(space.generate("a lighthouse", [], TINY, visitor=ALICE))
    before = base_weights(space.engine.pipe)
    calls = {"training": 0}

    def out_of_memory(module, args, kwargs):
        if torch.is_grad_enabled():  # training steps (validation and samples run without gradients)
            calls["training"] += 1
            if calls["training"] == 5:  # step 5: the second step of the second chunk
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)")

    hook = space.engine.pipe.transformer.register_forward_pre_hook(out_of_memory, with_kwargs=True)
    try:
        status = space.jobs.start(red_zip, CONFIG, visitor=ALICE)
        failed = wait_for_job(space, status.job_id)
    finally:
        hook.remove()
    # 1. The job failed with a message that says what happened and what to do; no traceback, no paths.
    assert failed.state == "failed"
    assert failed.error.startswith("The GPU ran out of memory at training step 5 of 12")
    assert "saved state of step 3" in failed.error and "checkpoints up to step 3" in failed.error and "Resume" in failed.error
    assert_clean_message(failed.error, settings)
    # 2. The pipeline is as before: no adapter, same base weights, same image.
    assert_pipeline_clean(space, before)
    assert np.array_equal(pixels(space.generate("a lighthouse", [], TINY, visitor=ALICE)), before_image)
    # 3. The saved checkpoint equals the uninterrupted run's, and the state of step 3 loads.
    files = space.jobs.root / status.job_id
    assert [path.name for path in failed.checkpoints] == ["step_000003.safetensors"]
    assert_equal_loras(failed.checkpoints[0], reference.checkpoints / "step_000003.safetensors")
    assert load_state(type(reference)(files))["step"] == 3
    assert not list((files / "state").glob(".partial*")) and not list((files / "checkpoints").glob(".*"))
    # 4. Resume continues from step 3 and ends with the uninterrupted run's weights.
    space.jobs.resume(status.job_id, visitor=ALICE)
    done = wait_for_job(space, status.job_id)
    assert done.state == "done", done.error
    assert [path.name for path in done.checkpoints] == [f"step_{step:06d}.safetensors" for step in (3, 6, 9)]
    assert [step for step, _ in done.loss] == list(range(1, 13))
    assert_equal_loras(done.lora_file, reference.final)
    assert_pipeline_clean(space, before)


# -- a full disk while checkpointing -------------------------------------------------------------


@pytest.mark.parametrize("where", ["checkpoints/.step_000006", "state/.partial_000006"])
def test_a_full_disk_while_saving_keeps_the_last_state_and_resume_ends_as_an_uninterrupted_run(
    space, settings, red_zip, reference, monkeypatch, where
):
    real_save = export.save_file
    hit = []

    def full_disk(tensors, filename, metadata=None):
        if where in str(filename) and not hit:
            hit.append(filename)
            with open(filename, "wb") as handle:  # the disk fills part way through the write
                handle.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(export, "save_file", full_disk)
    before = base_weights(space.engine.pipe)
    status = space.jobs.start(red_zip, CONFIG, visitor=ALICE)
    failed = wait_for_job(space, status.job_id)
    assert hit, "the full disk was never reached"
    files = space.jobs.root / status.job_id
    # 1. The job says what happened and how to go on.
    assert failed.state == "failed"
    assert failed.error.startswith("The disk is full: training step 6 could not be saved")
    assert "saved state of step 3" in failed.error and "Free disk space" in failed.error and "resume" in failed.error
    assert_clean_message(failed.error, settings)
    # 2. The last state and checkpoint are intact, and nothing half-written is left beside them.
    kept = [path.name for path in sorted((files / "checkpoints").iterdir())]
    assert kept == (["step_000003.safetensors"] if where.startswith("checkpoints") else ["step_000003.safetensors", "step_000006.safetensors"])
    assert [path.name for path in sorted((files / "state").iterdir())] == ["step_000003"]
    assert load_state(type(reference)(files))["step"] == 3
    assert_equal_loras(files / "checkpoints" / "step_000003.safetensors", reference.checkpoints / "step_000003.safetensors")
    assert [path.name for path in failed.checkpoints] == ["step_000003.safetensors"]
    assert_pipeline_clean(space, before)
    # 3. Space freed: resume ends with the weights of an uninterrupted run.
    space.jobs.resume(status.job_id, visitor=ALICE)
    done = wait_for_job(space, status.job_id)
    assert done.state == "done", done.error
    assert_equal_loras(done.lora_file, reference.final)
    for step in (3, 6, 9):
        name = f"step_{step:06d}.safetensors"
        assert_equal_loras(files / "checkpoints" / name, reference.checkpoints / name)


# -- the app killed mid-job ------------------------------------------------------------------------


def preempt(client, chooser: random.Random) -> None:
    """Wait a random moment, then generate: the running chunk ends at its next step for it."""
    time.sleep(chooser.uniform(0.0, 0.4))
    client.predict(prompt="a harbour", seed=chooser.randrange(1000), steps=2, width=64, height=64, api_name="/generate")


def test_the_app_killed_mid_job_shows_it_interrupted_and_the_owner_resumes_it_in_the_train_tab(tmp_path, red_zip):
    """A real `python app.py`: a job started through gradio_client, preempted by generations at random
    steps, SIGKILL mid-run, the app started again, resumed in the Train tab, preempted again.

    The resume goes through a real browser (the tab's event; scripts have `/resume_training`). In a
    local run every request is the one local user's.
    """
    from gradio_client import Client, handle_file
    from playwright.sync_api import expect, sync_playwright

    from tests.app_process import PROCESSES, running_app
    from tests.test_ui_browser import BROWSER_FLAGS, CHROMIUM

    assert CHROMIUM, "the resume step needs Chromium: apt-get install chromium (CI's .ci/run installs it)"
    config = CONFIG | {"max_train_steps": 120, "checkpoint_every": 3}
    # 1. Start a long job and kill the app (no shutdown handler runs) once it has saved a state mid-chunk.
    with running_app(tmp_path) as url:
        client = Client(url, verbose=False)
        job_id = client.predict(dataset=handle_file(str(red_zip)), config=config, api_name="/start_training")["job_id"]
        files = tmp_path / "data" / "jobs" / job_id
        deadline = time.monotonic() + 90
        chooser = random.Random(14)
        while not [path for path in (files / "state").glob("step_*") if int(path.name[5:]) >= 6]:
            assert time.monotonic() < deadline, "the job saved no state in time"
            preempt(client, chooser)  # generations at random moments end chunks at random steps
        preempt(client, chooser)
        PROCESSES[url].send_signal(signal.SIGKILL)
        PROCESSES[url].wait(timeout=30)
    states = sorted(path.name for path in (files / "state").glob("step_*"))
    assert len(states) == 1 and not list((files / "state").glob(".partial*"))
    saved_step = int(states[0][5:])
    assert saved_step < 120, "the job ended before the kill"
    kept = {path.name: path.stat().st_ino for path in (files / "checkpoints").glob("step_*.safetensors") if int(path.stem[5:]) <= saved_step}
    digest = folder_digest(files / "checkpoints")
    # 2. Started again on the same data folder: the job is interrupted, its state and checkpoints untouched.
    with running_app(tmp_path) as url, sync_playwright() as playwright:
        client = Client(url, verbose=False)
        status = client.predict(job_id=job_id, api_name="/training_status")
        assert status["state"] == "interrupted" and status["error"] == ""
        assert status["step"] >= saved_step and status["total_steps"] == 120
        assert folder_digest(files / "checkpoints") == digest
        assert sorted(path.name for path in (files / "state").glob("step_*")) == states
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
            page.goto(url, wait_until="domcontentloaded", timeout=120_000)
            page.locator("#header").wait_for(timeout=120_000)
            page.get_by_role("tab", name="Train").click()
            expect(page.locator("#train-jobs")).to_contain_text("interrupted", timeout=30_000)
            page.locator("#train-pick input").click()
            page.get_by_role("option").filter(has_text=f"{job_id[:8]} · interrupted").first.click()
            expect(page.locator("#train-progress")).to_contain_text("interrupted", timeout=30_000)
            page.locator("#train-resume").click()
            expect(page.locator("#train-progress")).to_contain_text(re.compile(r"queued|running|done"), timeout=30_000)
        finally:
            browser.close()
        deadline = time.monotonic() + 180
        while (status := client.predict(job_id=job_id, api_name="/training_status"))["state"] in ("interrupted", "queued", "running"):
            assert time.monotonic() < deadline, status["step"]
            preempt(client, chooser)
    # 3. It went on from its saved state (the checkpoints before it were not written again) to the end,
    #    with the weights of an uninterrupted run.
    assert status["state"] == "done", status["error"]
    assert [step for step, _ in status["loss"]] == list(range(1, 121))
    assert {name: (files / "checkpoints" / name).stat().st_ino for name in kept} == kept
    reference = job_folder(tmp_path / "reference", red_zip, **config)
    run_chunk(build_tiny_pipeline(), reference.root, adapter_name="reference")
    assert_equal_loras(files / "final.safetensors", reference.final)
