"""ZeroGPU, played by the stand-in of `lora_space.gpu` (a forked worker per call, or one reused while idle,
pickled arguments and results, as `spaces` runs them): the same images and weights as in-process,
nothing a worker changed assumed by the main process, and every training GPU call scheduled inside
a request of the visitor who owns the job, so that their quota pays."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from lora_space.gpu import STANDIN, STANDIN_LOG, token_digest
from tests.app_process import running_app
from tests.test_ui_browser_owners import SPACE_ENV
from tests.train_factory import RUN, red_zip, space  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]


def give_up(job) -> None:
    """gradio_client's cancel: the server closes the stream once its running iteration returns (the
    client's short HTTP timeout may pass first; the cancel goes on on the server)."""
    with contextlib.suppress(httpx.TimeoutException):
        job.cancel()


@pytest.mark.parametrize("mode", ["fork", "reuse"])
def test_in_workers_generation_and_training_match_in_process_and_leave_the_main_process_as_it_was(tmp_path, mode):
    log = tmp_path / "calls.jsonl"
    env = os.environ | {STANDIN: mode, STANDIN_LOG: str(log), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "tests.zerogpu_checks", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["chunks"] >= 3
    # A generation waited for a training chunk about one piece, not a chunk (the chunk's own budget is 120 s).
    assert all(wait < figures["idle_seconds"] + 5 for wait in figures["waits_during_job"]), figures
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    chunks = [call for call in calls if call["function"] == "train_chunk"]
    assert len(chunks) == figures["chunks"]
    if mode == "fork":
        assert all(call["fresh"] for call in calls)  # each call a new fork of the main process
    else:
        assert any(not call["fresh"] for call in chunks)  # the idle worker (with its parked session) went on
        assert len({call["worker"] for call in calls if call["function"] == "train_chunk"}) < len(chunks)


def test_on_a_space_every_training_call_runs_in_its_owners_request_and_pauses_when_they_leave(tmp_path, red_zip):
    log = tmp_path / "calls.jsonl"
    env = SPACE_ENV | {STANDIN: "fork", STANDIN_LOG: str(log)}
    with running_app(tmp_path, **env) as url:
        alice = Client(url, headers={"X-IP-Token": "ip-token-alice"}, verbose=False)
        bob = Client(url, headers={"X-IP-Token": "ip-token-bob"}, verbose=False)
        carol = Client(url, headers={"X-IP-Token": "ip-token-carol"}, verbose=False)
        # 1. Alice's job trains inside her streaming call; Bob generates meanwhile.
        job = alice.submit(dataset=handle_file(str(red_zip)), config=RUN | {"max_train_steps": 300}, api_name="/start_training")
        while not job.outputs() or bob.predict(job_id=job.outputs()[0]["job_id"], api_name="/training_status")["step"] < 5:
            time.sleep(0.1)
        job_id = job.outputs()[0]["job_id"]
        for seed in (1, 2):
            bob.predict(prompt="a harbour", seed=seed, steps=2, width=64, height=64, api_name="/generate")
        final = job.result(timeout=600)
        assert final["state"] == "done" and final["step"] == 300, final
        assert len(job.outputs()) >= 3  # the status at once, then one after each chunk
        # 2. Carol starts a long job and goes away mid-job: it pauses with its state saved ...
        long = carol.submit(dataset=handle_file(str(red_zip)), config=RUN | {"max_train_steps": 3000}, api_name="/start_training")
        while not long.outputs() or alice.predict(job_id=long.outputs()[0]["job_id"], api_name="/training_status")["step"] < 5:
            time.sleep(0.2)
        long_id = long.outputs()[0]["job_id"]
        # The client gives up the stream (as a closed page does); the server closes the job's event once
        # its chunk returns, which a generation's turn brings at the next step.
        threading.Thread(target=give_up, args=(long,), daemon=True).start()
        deadline = time.monotonic() + 120
        while (status := alice.predict(job_id=long_id, api_name="/training_status"))["state"] != "interrupted":
            assert time.monotonic() < deadline, status["state"]
            bob.predict(prompt="a harbour", seed=3, steps=2, width=64, height=64, api_name="/generate")
        paused = status["step"]
        # ... and only its owner resumes it, in her own request, from the saved step.
        with pytest.raises(Exception, match="Only the visitor who started this job can resume it"):
            bob.predict(job_id=long_id, api_name="/resume_training")
        resumed = carol.submit(job_id=long_id, api_name="/resume_training")
        while alice.predict(job_id=long_id, api_name="/training_status")["step"] < paused + 5:
            time.sleep(0.2)
        status = alice.predict(job_id=long_id, api_name="/cancel_training")
        assert status["state"] == "cancelled" and status["loss"][0][0] == 1
        assert [step for step, _ in status["loss"]] == list(range(1, status["step"] + 1))  # no step lost or trained twice
        resumed.result(timeout=120)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    owners = {job_id: token_digest("ip-token-alice"), long_id: token_digest("ip-token-carol")}
    chunks = [call for call in calls if call["function"] == "train_chunk"]
    assert len(chunks) >= 5
    for call in chunks:
        assert call["ip_token"] in owners.values() and call["session"] in (alice.session_hash, carol.session_hash), call
        assert (call["ip_token"] == owners[job_id]) == (call["session"] == alice.session_hash), call
    assert {call["ip_token"] for call in calls if call["function"] == "_generate_on_gpu"} == {token_digest("ip-token-bob")}


def test_a_chunk_refused_a_gpu_pauses_the_job_and_resume_ends_as_an_uninterrupted_run(space, red_zip, tmp_path, monkeypatch):
    """ZeroGPU refuses a call when the owner's quota is spent: the job pauses (not fails) with spaces' words."""
    import torch

    from lora_space.errors import GpuUnavailableError
    from lora_space.lora.safefile import load_lora_file
    from lora_space.tiny import build_tiny_pipeline
    from lora_space.train import chunk
    from lora_space.train.trainer import run_chunk
    from tests.train_factory import ALICE, job_folder, wait_for_job

    real, calls = chunk.train_chunk, []

    def quota_spent_on_the_second_call(*args):
        calls.append(args)
        if len(calls) == 2:
            raise GpuUnavailableError("ZeroGPU quota exceeded: You have exceeded your free ZeroGPU quota (120s requested vs. 44s left).")
        return real(*args)

    monkeypatch.setattr(chunk, "train_chunk", quota_spent_on_the_second_call)
    config = RUN | {"max_train_steps": 9}
    status = space.jobs.start(red_zip, config, visitor=ALICE)
    paused = wait_for_job(space, status.job_id, states=("interrupted", "failed", "done"))
    assert paused.state == "interrupted" and paused.step == 3, (paused.state, paused.error)
    assert "120s requested vs. 44s left" in paused.error and "resume it later" in paused.error
    space.jobs.resume(status.job_id, visitor=ALICE)
    done = wait_for_job(space, status.job_id)
    assert done.state == "done" and done.error == ""
    reference = job_folder(tmp_path / "reference", red_zip, **config)
    run_chunk(build_tiny_pipeline(), reference.root, adapter_name="reference")
    want, _ = load_lora_file(reference.final)
    got, _ = load_lora_file(done.lora_file)
    assert all(torch.equal(want[name], got[name]) for name in want)
