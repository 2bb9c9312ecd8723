"""One training chunk as one GPU call (`train_chunk`): on ZeroGPU a forked worker runs it, elsewhere this process."""

from __future__ import annotations

from pathlib import Path

from ..engine import engine_by_id
from ..gpu import gpu
from .checkpoint import JobFiles
from .trainer import ChunkResult, run_chunk

ZEROGPU_CHUNK_SECONDS = 90  # training time per ZeroGPU call; the call asks for this plus a margin
CHUNK_SECONDS = 60  # elsewhere: the state is saved at least this often (a generation ends a chunk sooner)


def _chunk_seconds(engine_id: int, job_dir: str, adapter_name: str, max_steps: int | None, max_seconds: float | None) -> int:
    """ZeroGPU duration of one chunk: its training time plus loading, samples and saving."""
    return int((max_seconds or ZEROGPU_CHUNK_SECONDS) + 30)


@gpu(duration=_chunk_seconds)
def train_chunk(engine_id: int, job_dir: str, adapter_name: str, max_steps: int | None, max_seconds: float | None) -> ChunkResult:
    """One chunk on the engine's pipeline (the caller holds a turn). It ends within one piece when a
    stop file is in the job folder (cancel, shutdown) or a generation waits; the job's session stays
    parked on the engine of the process that ran it, for the job's next chunk."""
    files = JobFiles(Path(job_dir))
    engine = engine_by_id(engine_id)
    with engine.lend() as pipe:
        return run_chunk(
            pipe, files.root, adapter_name=adapter_name, max_steps=max_steps, max_seconds=max_seconds,
            should_stop=files.stop_flag.exists, should_yield=engine.generation_waiting,
            parking=engine if engine.parks_training else None,
        )  # fmt: skip
