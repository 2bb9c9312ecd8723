"""LoRA Space under the ZeroGPU stand-in, in one process: `python -m tests.zerogpu_checks ROOT`.

Run by tests/app/test_zerogpu.py with `LORA_SPACE_ZEROGPU_STANDIN=fork` or `reuse` set (the `@gpu`
decorators read it at import), so every generation and training chunk runs in a forked worker
with pickled arguments and results, as on ZeroGPU. Checks, each an assert:

1. Generation in a worker gives the image an in-process run gives, with and without a LoRA, and a
   LoRA error raised in the worker reaches the caller as itself.
2. A training job run chunk after chunk in workers, preempted by generations, ends with the weights
   an uninterrupted in-process run has; the generations waited about one step.
3. Nothing a worker changed is assumed by this process: its pipeline holds no adapter, no parked
   session, reads no LoRA file, and keeps its base weights bit for bit.

Prints one JSON line of figures for the test.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lora_space.core import gpu
from lora_space.core.errors import LoraFileError
from lora_space.core.settings import Settings
from lora_space.generate.engine import Engine
from lora_space.generate.request import GenerationRequest, LoraSpec, Options
from lora_space.lora.safefile import load_lora_file
from lora_space.service import LoraSpace
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.train.trainer import run_chunk
from tests.lora_factory import write_lora
from tests.train_factory import ALICE, RUN, colour_zip, job_folder

TINY = Options(seed=7, steps=2, width=64, height=64)
CONFIG = RUN | {"max_train_steps": 120, "checkpoint_every": 30}


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def main(root: Path) -> dict:
    mode = gpu.standin_mode()
    assert mode in gpu.STANDIN_MODES, "run with LORA_SPACE_ZEROGPU_STANDIN=fork or reuse"
    env = {"LORA_SPACE_BASE_MODEL": "tiny-random", "LORA_SPACE_LORA_DIR": str(root / "loras"), "LORA_SPACE_DATA_DIR": str(root / "data"), "HF_HUB_OFFLINE": "1"}
    space = LoraSpace(Settings.from_env(env), Engine(build_tiny_pipeline()), chunk_seconds=120, in_requests=True)
    engine = space.engine
    weights = {name: tensor.clone() for name, tensor in engine.pipe.transformer.state_dict().items()}
    reference = Engine(build_tiny_pipeline())  # in this process, no worker

    # 1. Generation: the same images as in-process; our errors come back as themselves.
    lora = write_lora(root / "ink.safetensors", 3)
    ink = LoraSpec(key=str(lora), file=str(lora), name="ink", strength=0.8)
    for loras in ((), (ink,), (ink,)):  # the repeated mix fuses in a reused worker
        request = GenerationRequest("a lighthouse", TINY, loras)
        assert np.array_equal(pixels(engine.generate(request)), pixels(reference._run_locked(request, TINY.seed, None)))
    foreign = root / "sdxl.safetensors"
    save_file({"transformer.down_blocks.0.proj_in.lora_A.weight": torch.ones(4, 320), "transformer.down_blocks.0.proj_in.lora_B.weight": torch.ones(320, 4)}, str(foreign))
    try:
        engine.generate(GenerationRequest("a cat", TINY, (LoraSpec(str(foreign), str(foreign), "sdxl", 1.0),)))
        raise AssertionError("a LoRA of another model was not refused")
    except LoraFileError as error:
        assert "no module" in str(error), error  # its own message, not a bare "ZeroGPU worker error"
    idle = statistics.median(_timed(engine) for _ in range(3))

    # 2. Training in workers, preempted by generations: the weights of an uninterrupted run.
    zip_path = colour_zip(root / "red.zip")
    job = space.jobs.start(zip_path, CONFIG, visitor=ALICE)
    statuses = []
    follower = threading.Thread(target=lambda: statuses.extend(space.jobs.follow(job.job_id)))
    follower.start()
    waits = []
    for _ in range(2):
        while space.jobs.status(job.job_id).step < 3 + 40 * len(waits):
            assert follower.is_alive(), statuses[-1] if statuses else "the job did not start"
            time.sleep(0.05)
        waits.append(_timed(engine))
    follower.join(600)
    done = space.jobs.status(job.job_id)
    assert done.state == "done", (done.state, done.error)
    expected = job_folder(root / "reference", zip_path, **CONFIG)
    run_chunk(build_tiny_pipeline(), expected.root, adapter_name="reference")
    want, _ = load_lora_file(expected.final)
    got, _ = load_lora_file(space.jobs.root / job.job_id / "final.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[name], got[name]) for name in want)
    chunks = len(statuses) - 1  # the first status, then one after each chunk
    assert chunks >= 3, [status.step for status in statuses]  # the two generations each ended a chunk

    # 3. This process assumed nothing a worker changed: its pipeline is as it was.
    assert engine.loaded_adapters() == [] and engine.file_reads == 0 and engine.parked is None
    after = engine.pipe.transformer.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(weights[name], after[name]) for name in weights)
    return {"mode": mode, "idle_seconds": idle, "waits_during_job": waits, "chunks": chunks}


def _timed(engine: Engine) -> float:
    started = time.perf_counter()
    engine.generate(GenerationRequest("a harbour", TINY))
    return time.perf_counter() - started


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(main(Path(sys.argv[1]))))
