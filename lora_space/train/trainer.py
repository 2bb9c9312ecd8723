"""The LoRA trainer: flow matching on the FLUX transformer, one chunk at a time.

`run_chunk` trains a job on a pipeline it is lent (the engine's own, see `Engine.lend`, or
the CLI's) in pieces (a step, an image encoded, a validation image, a sample image), from the
job folder's last full state to a new one, and ends between pieces when its time is up, when
it is cancelled or when a generation waits. Every chunk writes its state back, so chunks can
run in different processes (ZeroGPU workers) and a job killed at any moment resumes from its
last state and ends with the same weights as an uninterrupted run. Within one process the
job's session (`session.Session`: adapter, optimizer, cache) may stay parked between chunks,
so that a chunk ended for a generation resumes without reading anything back.

The maths follows diffusers' FLUX DreamBooth LoRA recipe (`train_dreambooth_lora_flux.py`):
latents normalised with the VAE's shift and scale; t drawn uniformly from the scheduler's
training timesteps ("none" weighting); `x_t = (1 - sigma) x_0 + sigma * noise`; latents packed
2x2; the guidance embedding fed 3.5; the timestep divided by 1000; the target `noise - x_0`;
the loss the per-image mean squared error; gradients clipped to norm 1; LoRA with alpha over
rank on the attention and feed-forward Linear layers, A Gaussian and B zero.
"""

from __future__ import annotations

import errno
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import FluxPipeline

from lora_space.core.errors import JobError
from lora_space.train.checkpoint import JobFiles
from lora_space.train.lora_file import save_trained_lora
from lora_space.train.steps import Parallel

if TYPE_CHECKING:
    from lora_space.train.session import Parking, Session

# diffusers' FLUX DreamBooth LoRA recipe: attention (image and text streams) and feed-forward layers.
@dataclass
class ChunkResult:
    """What one chunk did: where the job is, why the chunk ended, its pieces and their times.

    `yielded`: it ended because a generation waited; `pieces`: how many of each kind it did
    (`step`, `cache`, `validation`, `sample`, `checkpoint`); `resumed`: `memory` (the parked
    session) or `disk`; `timings`: seconds to open the session, do the pieces, and save.
    """

    step: int
    total_steps: int
    finished: bool
    stopped: bool
    seconds_per_step: float | None = None
    warnings: list[str] = field(default_factory=list)
    yielded: bool = False
    pieces: dict[str, int] = field(default_factory=dict)
    resumed: str = "disk"
    timings: dict[str, float] = field(default_factory=dict)


def run_chunk(
    pipe: FluxPipeline,
    job_dir: Path,
    *,
    adapter_name: str,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    should_yield: Callable[[], bool] = lambda: False,
    parallel: Parallel | None = None,
    parking: Parking | None = None,
) -> ChunkResult:
    """Train the job in `job_dir` from its last state, piece by piece, until it is done or the chunk must end.

    A piece is one training step, one image or caption encoded for the cache, one held-out
    image's validation loss, one sample image, or a kept checkpoint. Before each piece (after the
    first) the chunk ends when `should_stop()` (cancel, shutdown: `stopped`), when `max_seconds`
    have passed, when `should_yield()` (a generation waits: `yielded`), or before a step when
    `max_steps` steps are done. It then saves the full state, with the pieces still due after
    the last step, so the next chunk goes on from there in this process or any other.

    The caller owns `pipe` for the call (`Engine.lend`); on return the pipeline is as it was
    (gradient checkpointing, modes, devices), and the adapter is deleted, or kept attached and
    switched off with the job's optimizer, schedule and cache in `parking.parked` (the engine),
    where the job's next chunk takes them back without reading its state from disk.

    Raises:
        TrainConfigError: the job's config cannot run here (a quantised base on a CPU).
        JobError: out of GPU memory or a full disk; the message says what the job keeps.
    """
    from lora_space.train.session import (
        Session,  # the session is made of this module's maths
    )

    parallel = parallel or Parallel()
    files = JobFiles(Path(job_dir))
    started = time.perf_counter()
    session: Session | None = None
    keep = False
    try:
        # 1. The job's session: the parked one, or set up again from the job folder.
        session = Session.open(pipe, files, adapter_name=adapter_name, parallel=parallel, parking=parking)
        session.begin()
        timings = {"open": time.perf_counter() - started}
        # 2. Pieces, at least one, until the job is done or the chunk must end.
        counts: Counter[str] = Counter()
        stopped = yielded = False
        while not session.done:
            if should_stop():
                stopped = True
                break
            if counts:
                if max_seconds is not None and time.perf_counter() - started > max_seconds:
                    break
                if should_yield():
                    yielded = True
                    break
                if max_steps is not None and counts["step"] >= max_steps and session.next_is_step:
                    break
            counts[session.next_piece()] += 1
        # 3. The full state if anything changed, and the LoRA when done.
        saving = time.perf_counter()
        timings["pieces"] = saving - started - timings["open"]
        session.save_if_changed()
        if session.done and parallel.is_main:
            save_trained_lora(files.final, session.parameters, session.config, session.rows, step=session.step)
        timings["save"] = time.perf_counter() - saving
        keep = parking is not None and not session.done and not stopped
        return ChunkResult(
            session.step, session.config.max_train_steps, session.done, stopped, session.seconds_per_step(counts["step"]),
            session.progress["warnings"], yielded=yielded, pieces=dict(counts), resumed=session.resumed, timings=timings,
        )  # fmt: skip
    except torch.OutOfMemoryError:
        step = session.step if session else 0
        total = session.config.max_train_steps if session else 0
        raise JobError(
            f"The GPU ran out of memory at training step {step + 1} of {total}; the job stopped and "
            f"keeps {_kept(files)}. Resume it when the GPU is less busy, or start a new job with a lower resolution, "
            "train_batch_size or network_dim, or with gradient_checkpointing on."
        ) from None
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise JobError(
            f"The disk is full: training step {session.step if session else 0} could not be saved; the job stopped and keeps "
            f"{_kept(files)} (nothing half-written). Free disk space (delete old jobs, LoRAs or outputs), then resume the job."
        ) from None
    finally:
        # 4. Give the pipeline back: adapter deleted or parked, checkpointing, modes and devices as they were.
        if session is not None:
            session.end(keep=keep)
        if parking is not None:
            parking.parked = session if keep else None


def _kept(files: JobFiles) -> str:
    """What a stopped job still has, for its message: the newest full state and kept LoRA (no paths)."""
    states = sorted(files.states.glob("step_*")) if files.states.exists() else []
    kept = sorted(files.checkpoints.glob("step_*.safetensors")) if files.checkpoints.exists() else []
    parts = [f"its saved state of step {int(states[-1].name[5:])}" if states else "no saved state yet (it restarts from step 0)"]
    if kept:
        parts.append(f"its checkpoints up to step {int(kept[-1].stem[5:])}")
    return " and ".join(parts)

