"""The cost of one preemption of a training chunk, as a share of a training step, on this CPU.

    python benchmarks/bench_preemption.py [--steps 24] [--every 2] [--rounds 3] [--models tiny,flux-shaped]

A generation that waits ends the running chunk at its next step (`Engine.generation_waiting`).
For each model the same job is trained `--steps` steps three ways, in turns, round after round,
each through the engine as the app does it (a turn, `Engine.lend`, `run_chunk`):

- whole: one chunk;
- preempted, warm: a chunk ended after every `--every` steps, the session parked on the engine
  between chunks (the app's case: the pipeline stays in the process);
- preempted, cold: the same, the session set up again from the job folder each time (a fresh
  ZeroGPU worker's case, less the fork and moving the model to the GPU).

One preemption costs (preempted - whole) / preemptions; the table gives it in seconds and as a
share of the median step. Then the parts of one preemption (`preemption.py`, the code
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

    def train(files: JobFiles, *, chunk: int | None, parked: bool) -> tuple[float, list[float]]:
        """`steps` steps in chunks of `chunk` (None: one chunk), ended as a waiting generation ends them."""
        done, per_step = 0, []
        started = time.perf_counter()
        while done < steps:
            budget = min(chunk or steps, steps - done)  # a chunk's end after `budget` steps takes the path a waiting generation's does
            if not parked and engine.parked is not None:
                engine.parked.close()
                engine.parked = None
            with engine.turn(), engine.lend() as pipe:
                result = run_chunk(pipe, files.root, adapter_name=f"bench_{files.root.name}", max_steps=budget, parking=engine)
            assert result.pieces.get("step") == budget, result.pieces
            done += budget
            per_step.append(result.timings["pieces"] / budget)
        if engine.parked is not None:
            engine.parked.close()
            engine.parked = None
        return time.perf_counter() - started, per_step

    ways = {"whole": dict(chunk=None, parked=True), "warm": dict(chunk=every, parked=True), "cold": dict(chunk=every, parked=False)}
    warm_up = job("warm-up")
    train(warm_up, chunk=2, parked=True)  # the cache's code path, allocator, kernels
    times: dict[str, list[float]] = {way: [] for way in ways}
    step_seconds: list[float] = []
    for round_number in range(rounds):
        for way, options in ways.items():
            seconds, per_step = train(job(f"{way}-{round_number}"), **options)
            times[way].append(seconds)
            step_seconds += per_step
    step = statistics.median(step_seconds)
    preemptions = steps // every - 1
    figures = {"step_seconds": step}
    for way in ("warm", "cold"):
        cost = (statistics.median(times[way]) - statistics.median(times["whole"])) / preemptions
        figures[way] = cost
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
    print(f"{args.steps} steps; a preemption every {args.every} steps ({args.steps // args.every - 1} preemptions); {args.rounds} rounds in turns")
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
