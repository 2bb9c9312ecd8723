"""One GPU, many visitors, against a running app (`python app.py`, tiny, as on a Space): a generation
waits about one training step, not a chunk; `/cancel_training` then `/resume_training` goes on from
the saved step, for the job's owner only; and the Space takes at most 10 jobs waiting and running,
whoever asks (30 fresh `gradio_client` sessions)."""

from __future__ import annotations

import statistics
import time

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.app_process import running_app
from tests.test_ui_browser_owners import SPACE_ENV
from tests.train_factory import RUN, red_zip  # noqa: F401 (fixture)

LONG = RUN | {"max_train_steps": 3000}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("sharing"), **SPACE_ENV) as url:
        yield url


def generate_seconds(client: Client, seed: int) -> float:
    started = time.perf_counter()
    client.predict(prompt="a lighthouse", seed=seed, steps=2, width=64, height=64, api_name="/generate")
    return time.perf_counter() - started


def step_of(client: Client, job_id: str) -> int:
    return client.predict(job_id=job_id, api_name="/training_status")["step"]


def wait_for_step(client: Client, job_id: str, step: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while (now := step_of(client, job_id)) < step:
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    return now


def test_while_a_long_job_trains_each_generation_waits_about_one_step_and_the_job_goes_on(app, red_zip):
    visitor, trainer = Client(app, verbose=False), Client(app, verbose=False)
    idle = statistics.median(generate_seconds(visitor, seed) for seed in range(3))
    job_id = trainer.predict(dataset=handle_file(str(red_zip)), config=LONG, api_name="/start_training")["job_id"]
    wait_for_step(visitor, job_id, 3)
    steps = [step_of(visitor, job_id)]
    for moment in range(5):
        time.sleep(1.0 + moment)  # spread out over the job's chunks
        seconds = generate_seconds(visitor, seed=10 + moment)
        assert seconds < idle + 5, (moment, seconds, idle)
        steps.append(step_of(visitor, job_id))
    assert all(later > earlier for earlier, later in zip(steps, steps[1:])), steps  # the job advanced between them
    assert trainer.predict(job_id=job_id, api_name="/cancel_training")["state"] == "cancelled"


def test_cancel_then_resume_from_a_script_goes_on_from_the_saved_step_for_the_owner_only(app, red_zip):
    owner, other = Client(app, verbose=False), Client(app, verbose=False)
    job_id = owner.predict(dataset=handle_file(str(red_zip)), config=LONG, api_name="/start_training")["job_id"]
    wait_for_step(owner, job_id, 5)
    cancelled = owner.predict(job_id=job_id, api_name="/cancel_training")
    assert cancelled["state"] == "cancelled"
    saved = cancelled["step"]
    assert [step for step, _ in cancelled["loss"]] == list(range(1, saved + 1))
    with pytest.raises(AppError, match="Only the visitor who started this job can resume it"):
        other.predict(job_id=job_id, api_name="/resume_training")
    resumed = owner.predict(job_id=job_id, api_name="/resume_training")
    assert resumed["state"] in ("queued", "running") and resumed["step"] >= saved
    wait_for_step(owner, job_id, saved + 5)
    status = owner.predict(job_id=job_id, api_name="/cancel_training")
    # It went on from the saved step: the steps before it are kept as they were, none is trained twice.
    assert status["loss"][:saved] == cancelled["loss"]
    assert [step for step, _ in status["loss"]] == list(range(1, status["step"] + 1))


def test_thirty_fresh_sessions_get_at_most_ten_jobs_and_the_rest_a_message(app, red_zip):
    accepted, refused = [], []
    for _ in range(30):
        client = Client(app, verbose=False)  # each a new visitor
        try:
            accepted.append((client, client.predict(dataset=handle_file(str(red_zip)), config=LONG, api_name="/start_training")["job_id"]))
        except AppError as error:
            refused.append(str(error))
    try:
        assert len(accepted) == 10 and len(refused) == 20
        assert all("already has 10 training jobs waiting or running, the most it takes at once" in text for text in refused), refused[0]
    finally:
        for client, job_id in accepted:
            client.predict(job_id=job_id, api_name="/cancel_training")
    # Room again once they are gone.
    client = Client(app, verbose=False)
    job_id = client.predict(dataset=handle_file(str(red_zip)), config=RUN | {"max_train_steps": 2}, api_name="/start_training")["job_id"]
    client.predict(job_id=job_id, api_name="/cancel_training")
