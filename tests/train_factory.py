"""Build training datasets and job folders in code for the train tests."""

from __future__ import annotations

import bz2
import io
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from lora_space.generate.request import Options
from lora_space.service import LoraSpace
from lora_space.train.checkpoint import JobFiles
from lora_space.train.prepare import prepare_job
from lora_space.train.status import ACTIVE  # noqa: F401 (the states a job holds a place in, for the tests)
from lora_space.visitors.owners import Visitor

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


def raw_zip(path: Path, members: list[tuple[str, int, bytes, int, int]]) -> Path:
    """A zip written byte by byte, so that headers may lie: each member is
    `(name, method, compressed bytes, declared uncompressed size, declared CRC-32)`."""
    local, central = io.BytesIO(), io.BytesIO()
    for name, method, data, size, crc in members:
        encoded, offset = name.encode(), local.tell()
        version = 46 if method == zipfile.ZIP_BZIP2 else 20
        fields = (version, 0, method, 0, 0x21, crc, len(data), size, len(encoded))
        local.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields, 0) + encoded + data)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 3 << 8 | 20, *fields, 0, 0, 0, 0, 0o100644 << 16, offset) + encoded)
    count = len(members)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, central.tell(), local.tell(), 0)
    path.write_bytes(local.getvalue() + central.getvalue() + end)
    return path


def crc_bomb_zip(path: Path, *, bzip2: int = 200, deflate: int = 40, stored: int = 4000) -> Path:
    """The zip of the CRC bomb (issue 14, hole 4): members whose declared CRC is wrong, so that each
    fails its check only after it was inflated: `bzip2` members of 64 MiB of zeros (the issue's 39 KB
    zip inflated 12.5 GiB), `deflate` members of 64 MiB, and `stored` small ones (many members)."""
    zeros = bytes(64 * 2**20)
    packed_bz2 = bz2.compress(zeros, 9)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed_deflate = deflater.compress(zeros) + deflater.flush()
    wrong = zlib.crc32(zeros) ^ 1
    members = [(f"images/b{index:04d}.png", zipfile.ZIP_BZIP2, packed_bz2, len(zeros), wrong) for index in range(bzip2)]
    members += [(f"images/d{index:04d}.png", zipfile.ZIP_DEFLATED, packed_deflate, len(zeros), wrong) for index in range(deflate)]
    members += [(f"images/s{index:05d}.png", zipfile.ZIP_STORED, bytes(1024), 1024, 1) for index in range(stored)]
    return raw_zip(path, members)


def job_folder(root: Path, zip_path: Path, **config) -> JobFiles:
    """A job folder as `JobManager.start` writes it, for `run_chunk` directly."""
    files = JobFiles(root)
    root.mkdir(parents=True, exist_ok=True)
    prepare_job(files, zip_path, TINY_RUN | config, is_tiny=True)
    return files


def mean_colour(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).mean(axis=(0, 1))


# For tests of jobs on a real tiny engine (the `space` and `red_zip` fixtures are in conftest.py).
ALICE = Visitor("browser", "a" * 32)
TINY = Options(seed=3, steps=2, width=64, height=64)
RUN = {key: value for key, value in TINY_RUN.items() if key != "model_name"} | {"trigger_word": "redstyle"}


ENDED = ("done", "failed", "cancelled")
"""The states a job ends in; a job that is queued, running or interrupted may go on."""


def wait_for_job(owner, job_id: str, states=ENDED, *, leaving=None, until=None, timeout: float = 120, every: float = 0.02, meanwhile=None):
    """The one job-polling loop: polls the job until its state is in `states` (or is no longer in
    `leaving`, or `until(status)` holds).

    Args:
        owner: a LoraSpace (statuses are `JobStatus`) or a `gradio_client.Client` of a running app
            (statuses are `/training_status`'s dicts).
        job_id: the job to follow.
        states: the states to stop at (ignored when `leaving` or `until` is given).
        leaving: stop at the first state not in these (e.g. ACTIVE: whatever the job ended as).
        until: a test on the status to stop at, instead of `states`.
        timeout: seconds before the test fails.
        every: seconds between two polls (when no `meanwhile`).
        meanwhile: called with each status that does not stop the wait, instead of sleeping `every`
            (e.g. to generate while the job trains).
    Returns:
        The first status that stops the wait.
    Raises:
        AssertionError: the job did not get there within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if isinstance(owner, LoraSpace):
            status = owner.jobs.status(job_id)
            state = status.state
        else:
            status = owner.predict(job_id=job_id, api_name="/training_status")
            state = status["state"]
        if until is not None:
            stop = until(status)
        else:
            stop = state not in leaving if leaving is not None else state in states
        if stop:
            return status
        assert time.monotonic() < deadline, f"job {job_id} stayed {state} for {timeout} s"
        if meanwhile is not None:
            meanwhile(status)
        else:
            time.sleep(every)
