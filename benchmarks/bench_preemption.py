"""The cost of one preemption of a training chunk, as a share of a training step, on this CPU.

    python benchmarks/bench_preemption.py [--steps 24] [--every 2] [--rounds 3] [--models tiny,flux-shaped]

A generation that waits ends the running chunk at its next step (`Engine.generation_waiting`).
For each model a job is trained `--steps` steps in chunks of `--every` steps, each ended as a
waiting generation ends it and run as the app runs it (a turn, `Engine.lend`, `run_chunk`), two
ways, in turns, round after round:

- warm: the session parked on the engine between chunks (the app's case: the pipeline stays in
  the process);
- cold: the session set up again from the job folder each time (a fresh ZeroGPU worker's case,
  less the fork and moving the model to the GPU).

One preemption costs a chunk's time outside its steps (the state saved, the pipeline given back
and lent again, the session taken back); the table gives its median in seconds and as a share of
the median step. Then the parts of one preemption (`preemption.py`, the code
`gpu_train.py` measures on a GPU): the state saved, the adapter off and on (warm), and the adapter
attached and the state read back (cold). `tiny` is the test model; `flux-shaped` is
`bench_train.py`'s wider FLUX transformer at its 128 px, batch 2, rank 8.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {
    "tiny": dict(overrides=None, run=dict(resolution=64, train_batch_size=1, network_dim=4, network_alpha=4)),
    "flux-shaped": dict(overrides="WIDE", run=dict(resolution=128, train_batch_size=2, network_dim=8, network_alpha=4)),
}


def measure(name: str, steps: int, every: int, rounds: int, root: Path) -> dict:
    from benchmarks.bench_train import RUN as WIDE_RUN
    from benchmarks.bench_train import WIDE
    from benchmarks.preemption import preemption_parts
    from lora_space.engine import Engine
    from lora_space.tiny import build_tiny_pipeline
    from lora_space.train.checkpoint import JobFiles
    from lora_space.train.prepare import prepare_job
    from lora_space.train.trainer import run_chunk
    from tests.train_factory import colour_zip

    model = MODELS[name]
    engine = Engine(build_tiny_pipeline(transformer_overrides=WIDE if model["overrides"] else None))
    zip_path = colour_zip(root / f"{name}.zip", count=8, size=160)
    config = WIDE_RUN | model["run"] | {"max_train_steps": 100_000, "validation_split": 0.0, "sample_every": 0, "checkpoint_every": 0}

    def job(label: str) -> JobFiles:
        files = JobFiles(root / name / label)
        files.root.mkdir(parents=True)
        prepare_job(files, zip_path, config, is_tiny=True)
        return files

    def train(files: JobFiles, *, parked: bool) -> tuple[list[float], list[float]]:
        """`steps` steps in chunks of `every`, each ended as a waiting generation ends it; per chunk after the
        first, the time outside its steps (the preemption: state saved, pipeline given back and lent again,
        session taken back), and per chunk the time of a step."""
        overheads, per_step, done = [], [], 0
        while done < steps:
            if not parked and engine.parked is not None:
                engine.parked.close()
                engine.parked = None
            started = time.perf_counter()
            with engine.turn(), engine.lend() as pipe:
                result = run_chunk(pipe, files.root, adapter_name=f"bench_{files.root.name}", max_steps=every, parking=engine)
            wall = time.perf_counter() - started
            assert result.pieces.get("step") == every, result.pieces
            if done:  # the first chunk also builds the cache
                overheads.append(wall - result.timings["pieces"])
                per_step.append(result.timings["pieces"] / every)
            done += every
        if engine.parked is not None:
            engine.parked.close()
            engine.parked = None
        return overheads, per_step

    train(job("warm-up"), parked=True)  # the cache's code path, allocator, kernels
    overheads: dict[str, list[float]] = {"warm": [], "cold": []}
    step_seconds: list[float] = []
    for round_number in range(rounds):  # the two ways in turns, so a busy machine slows both alike
        for way in overheads:
            spent, per_step = train(job(f"{way}-{round_number}"), parked=way == "warm")
            overheads[way] += spent
            step_seconds += per_step
    figures = {"step_seconds": statistics.median(step_seconds)} | {way: statistics.median(values) for way, values in overheads.items()}
    # The parts, on the same transformer, with the code gpu_train.py runs on a GPU.
    files = job("parts")
    with engine.turn(), engine.lend() as pipe:
        run_chunk(pipe, files.root, adapter_name="bench_parts", max_steps=2, parking=engine)
    session = engine.parked
    figures["parts"] = preemption_parts(
        pipe.transformer, session.config, "bench_parts", session.parameters, session.optimizer, session.scheduler, lambda: None
    )
    engine.pipe.transformer.delete_adapters("bench_parts")
    engine.parked = None
    parameters = sum(parameter.numel() for parameter in engine.pipe.transformer.parameters())
    figures["model"] = f"{name}: {parameters / 1e6:.1f} M parameters, {config['resolution']} px, batch {config['train_batch_size']}, rank {config['network_dim']}"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="tiny,flux-shaped")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(f"{args.steps} steps in chunks of {args.every} ({args.steps // args.every - 1} preemptions a run); {args.rounds} rounds, warm and cold in turns")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            figures = measure(name.strip(), args.steps, args.every, args.rounds, Path(folder))
            step, parts = figures["step_seconds"], figures["parts"]
            print(f"\n{figures['model']}: {step * 1000:.1f} ms per step")
            for way, label in (("warm", "session parked (same process)"), ("cold", "from the job folder (fresh worker)")):
                print(f"  one preemption, {label:<36} {figures[way] * 1000:8.1f} ms = {figures[way] / step:6.2f} steps")
            print(f"  parts: state saved {parts['save'] * 1000:.1f} ms, adapter off/on {parts['warm'] * 1000:.2f} ms, "
                  f"adapter attached and state read back {parts['cold'] * 1000:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
