"""Hardening (issue 14, hole 2): one training job cannot hold the engine for minutes.

The work of a job as a whole is bounded at the call (images, steps x batch x megapixels, sample
images, validation images), each refusal naming the setting and the bound; and within the bounds,
building the cache, the validation loss and the sample images run in pieces, so that a generation
sent while they run waits about one piece, not the whole chunk."""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time

import pytest

from lora_space.core.errors import TrainConfigError
from lora_space.core.settings import Training
from lora_space.generate.engine import Engine
from lora_space.generate.request import GenerationRequest
from tests.train_factory import ACTIVE, ALICE, RUN, TINY, colour_zip, wait_for_job


@pytest.fixture
def space(make_space):
    """A space whose training jobs run in chunks of 3 steps."""
    return make_space(chunk_steps=3)


@pytest.mark.parametrize(
    "config, bounds, words",
    [
        (RUN | {"max_train_steps": 100_000}, Training(), r"max_train_steps 100000 x train_batch_size 1 x 0\.25 megapixels .* 25,000 units .* allows 10,000 per job \(LORA_SPACE_MAX_TRAIN_WORK\)"),
        (RUN | {"max_train_steps": 2000, "resolution": 1024, "train_batch_size": 5}, Training(), r"x 1\.05 megapixels \(resolution 1024, at least 0\.25\) is 10,486 units of training work"),
        (RUN | {"max_train_steps": 20, "sample_every": 1, "validation_prompts": [f"p{n}" for n in range(8)]}, Training(),
         r"sample_every 1 with 8 sample prompt\(s\) makes 320 sample images .* allows 200 per job \(LORA_SPACE_MAX_SAMPLE_IMAGES\): raise sample_every"),
        (RUN | {"max_train_steps": 300, "validation_split": 0.5, "checkpoint_every": 1}, Training(),
         r"validation_split 0\.5 holds out 3 images, each measured at 300 points .* 900 validation images .* allows 500 per job \(LORA_SPACE_MAX_VALIDATION_IMAGES\)"),
        (RUN | {"max_train_steps": 4}, Training(max_images=5), r"the dataset has 6 usable images; this Space trains on at most 5 per job \(LORA_SPACE_MAX_TRAIN_IMAGES\)"),
    ],
    ids=["steps", "steps x batch x megapixels", "sample images", "validation images", "images"],
)
def test_a_job_past_a_bound_of_its_work_is_refused_at_the_call_naming_the_setting(space, red_zip, config, bounds, words):
    space.jobs.settings = dataclasses.replace(space.jobs.settings, training=bounds)  # the bounds JobManager.start checks
    with pytest.raises(TrainConfigError, match=words):
        space.jobs.start(red_zip, config, visitor=ALICE)
    assert not space.jobs.root.exists() or not any(space.jobs.root.iterdir())  # nothing left behind
    # Within the bounds the same zip trains.
    space.jobs.settings = dataclasses.replace(space.jobs.settings, training=Training())
    assert wait_for_job(space, space.jobs.start(red_zip, RUN | {"max_train_steps": 2}, visitor=ALICE).job_id).state == "done"


@pytest.mark.slow  # about 50 s: a 40-image job with validation and samples, generating meanwhile
def test_cache_validation_and_samples_give_way_to_a_generation_within_one_piece(space, tmp_path):
    """40 images (20 held out), validation and 4 sample prompts at every step: minutes of work in the
    chunk's first minute, of which a generation now waits one piece (an image encoded, a held-out
    image measured, one sample image)."""
    space.jobs.chunk_steps = None  # chunks bounded by time only (60 s), as in the app
    idle = statistics.median(generate_seconds(space, seed) for seed in range(3))
    heavy = RUN | {"max_train_steps": 6, "validation_split": 0.5, "sample_every": 1, "validation_prompts": ["a", "b", "c", "d"]}
    job = space.jobs.start(colour_zip(tmp_path / "forty.zip", count=40), heavy, visitor=ALICE)
    waits = []
    folder = space.jobs.root / job.job_id


    def generate(status) -> None:
        if status.state == "running":
            waits.append(generate_seconds(space, seed=len(waits)))
        time.sleep(0.5)

    status = wait_for_job(space, job.job_id, leaving=ACTIVE, timeout=600, meanwhile=generate)
    assert status.state == "done", status.error
    assert len(waits) >= 4
    assert max(waits) < idle + 5, (waits, idle)
    # All of the job's work was done, in pieces between the generations.
    assert [step for step, _ in status.val_loss] == list(range(1, 7)) and len(status.samples) == 6 * 4 * 2
    deadline = time.monotonic() + 10  # the job says "done", then frees its cache
    while (folder / "cache").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (folder / "cache").exists()


def generate_seconds(space, seed: int) -> float:
    started = time.perf_counter()
    space.generate("a lighthouse", [], dataclasses.replace(TINY, seed=seed), visitor=ALICE)
    return time.perf_counter() - started


def test_the_hand_off_is_first_come_first_served_and_waiting_generations_are_counted(tiny_pipe):
    """A training thread that gives its turn back and asks again at once comes after the generation
    that was waiting (a plain lock lets it take the pipeline back first), and a chunk sees that a
    generation waits (`generation_waiting`, read from memory a forked GPU worker shares)."""
    engine = Engine(tiny_pipe)
    order: list[str] = []
    seen_waiting = threading.Event()
    hook = tiny_pipe.transformer.register_forward_pre_hook(lambda *_: order.append("generation") if "generation" not in order else None)

    def generation() -> None:
        engine.generate(GenerationRequest("a lighthouse", TINY))

    with engine.turn():  # a training chunk holds the pipeline
        waiter = threading.Thread(target=generation)
        waiter.start()
        deadline = time.monotonic() + 10
        while not engine.generation_waiting():
            assert time.monotonic() < deadline, "the waiting generation was not counted"
            time.sleep(0.01)
        seen_waiting.set()
    with engine.turn():  # the same thread asks again at once
        order.append("training")
    waiter.join()
    hook.remove()
    assert seen_waiting.is_set() and order == ["generation", "training"] and not engine.generation_waiting()
