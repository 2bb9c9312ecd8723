"""Build training datasets and job folders in code for the train tests."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_space.engine import Engine, Options
from lora_space.owners import Visitor
from lora_space.service import LoraSpace
from lora_space.tiny import build_tiny_pipeline
from lora_space.train.checkpoint import JobFiles
from lora_space.train.jobs import JobManager
from lora_space.train.prepare import prepare_job

RED = (230, 30, 30)
TINY_RUN = dict(  # a quick tiny run: 64 px, rank 4, no bf16 on a CPU
    model_name="tiny", resolution=64, network_dim=4, network_alpha=4, mixed_precision="no", lr_scheduler="constant",
    learning_rate=0.01, sample_every=0, checkpoint_every=0, validation_split=0.2, seed=0,
)  # fmt: skip


def colour_zip(path: Path, colour: tuple[int, int, int] = RED, *, count: int = 6, trigger: str = "redstyle", size: int = 64) -> Path:
    """`count` images of one colour (each with faint different noise, so none is a duplicate), captioned."""
    generator = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(count):
            noise = generator.integers(-6, 7, size=(size, size, 3))
            array = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, "PNG")
            archive.writestr(f"images/picture_{index}.png", buffer.getvalue())
            archive.writestr(f"captions/picture_{index}.txt", f"{trigger}, a picture number {index}")
    return path


def job_folder(root: Path, zip_path: Path, **config) -> JobFiles:
    """A job folder as `JobManager.start` writes it, for `run_chunk` directly."""
    files = JobFiles(root)
    root.mkdir(parents=True, exist_ok=True)
    prepare_job(files, zip_path, TINY_RUN | config, is_tiny=True)
    return files


def mean_colour(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).mean(axis=(0, 1))


# For tests of jobs on a real tiny engine (import the fixtures where they are used).
ALICE = Visitor("browser", "a" * 32)
TINY = Options(seed=3, steps=2, width=64, height=64)
RUN = {key: value for key, value in TINY_RUN.items() if key != "model_name"} | {"trigger_word": "redstyle"}


@pytest.fixture
def space(settings) -> LoraSpace:
    """A LoraSpace on the tiny engine whose jobs run in chunks of 3 steps."""
    space = LoraSpace(settings, Engine(build_tiny_pipeline()))
    space.jobs = JobManager(space, chunk_steps=3)
    yield space
    space.jobs.close()


@pytest.fixture(scope="module")
def red_zip(tmp_path_factory):
    return colour_zip(tmp_path_factory.mktemp("zips") / "red.zip")


def wait_for_job(space: LoraSpace, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 120):
    """The job's status once it is in one of `states`; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = space.jobs.status(job_id)
        if status.state in states:
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} stayed {space.jobs.status(job_id).state}")
