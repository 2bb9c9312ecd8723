"""One GPU, many visitors: how long a generation waits while a training job runs, on the tiny model.

    python benchmarks/bench_sharing.py [--scenario long|heavy|both] [--generations 5]

Uses only the app's own calls (`LoraSpace.generate`, `JobManager.start/status`), so the same script
measures any version of the app (run it from an old checkout to get the figure before a change):

- `long`: a 3000-step job (the default chunk time); five 2-step 64x64 generations at spread-out
  moments. Prints each one's latency against the idle latency, and the job's step before and after.
- `heavy`: the work issue 14 (hole 2) measured: 100 images, `validation_split` 0.5, `sample_every` 1,
  8 sample prompts, 10 steps (within the job bounds; more is refused at the call). Prints the longest
  time one chunk held the engine (`Engine.lend`) and the latency of a generation sent while the
  job's heavy part runs.
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

HEAVY = dict(validation_split=0.5, sample_every=1, max_train_steps=10, validation_prompts=[f"a picture {n}" for n in range(8)])


def make_space(root: Path):
    from lora_space.engine import Engine
    from lora_space.service import LoraSpace
    from lora_space.settings import Settings
    from lora_space.tiny import build_tiny_pipeline

    env = {"LORA_SPACE_BASE_MODEL": "tiny", "LORA_SPACE_LORA_DIR": str(root / "loras"), "LORA_SPACE_DATA_DIR": str(root / "data"), "HF_HUB_OFFLINE": "1"}
    return LoraSpace(Settings.from_env(env), Engine(build_tiny_pipeline()))


def generate_seconds(space, seed: int = 3) -> float:
    from tests.train_factory import ALICE, TINY

    from dataclasses import replace

    started = time.perf_counter()
    space.generate("a lighthouse", [], replace(TINY, seed=seed), visitor=ALICE)
    return time.perf_counter() - started


def hold_recorder(engine) -> list[float]:
    """Record how long each `Engine.lend` (one training chunk) held the pipeline."""
    holds: list[float] = []
    lend = engine.lend

    def timed_lend(*args, **kwargs):
        context = lend(*args, **kwargs)

        class Timed:
            def __enter__(self):
                value = context.__enter__()
                self.start = time.perf_counter()
                return value

            def __exit__(self, *exc):
                holds.append(time.perf_counter() - self.start)
                return context.__exit__(*exc)

        return Timed()

    engine.lend = timed_lend
    return holds


def wait_running(space, job_id: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while space.jobs.status(job_id).state == "queued":
        if time.monotonic() > deadline:
            raise SystemExit("the job did not start")
        time.sleep(0.05)


def long_job(root: Path, generations: int) -> None:
    from tests.train_factory import ALICE, RUN, colour_zip

    space = make_space(root)
    idle = statistics.median(generate_seconds(space) for _ in range(5))
    job = space.jobs.start(colour_zip(root / "red.zip"), RUN | {"max_train_steps": 3000}, visitor=ALICE)
    wait_running(space, job.job_id)
    time.sleep(2)
    print(f"long job: idle 2-step generation {idle:.2f} s; a 3000-step job running")
    worst = 0.0
    for number in range(generations):
        before = space.jobs.status(job.job_id).step
        seconds = generate_seconds(space, seed=10 + number)
        after = space.jobs.status(job.job_id).step
        worst = max(worst, seconds)
        print(f"  generation {number + 1}: {seconds:6.2f} s (idle + {seconds - idle:5.2f} s); job at step {before} -> {after}")
        time.sleep(3 + 2 * number)  # spread out
    print(f"  worst: {worst:.2f} s against {idle:.2f} s idle")
    space.jobs.cancel(job.job_id)
    space.jobs.close()


def heavy_job(root: Path) -> None:
    from tests.train_factory import ALICE, RUN, colour_zip

    space = make_space(root)
    holds = hold_recorder(space.engine)
    idle = statistics.median(generate_seconds(space) for _ in range(5))
    zip_path = colour_zip(root / "hundred.zip", count=100)
    try:
        job = space.jobs.start(zip_path, RUN | HEAVY, visitor=ALICE)
    except Exception as error:  # noqa: BLE001 (a bound refused it: print why)
        print(f"heavy job refused: {error}")
        return
    wait_running(space, job.job_id)
    time.sleep(1)
    waits = []
    for seed in range(3):
        waits.append(generate_seconds(space, seed=20 + seed))
        time.sleep(1)
    started = time.perf_counter()
    while space.jobs.status(job.job_id).state in ("queued", "running"):
        time.sleep(0.2)
    print(f"heavy job (100 images, validation_split 0.5, sample_every 1, 8 prompts, 10 steps): {space.jobs.status(job.job_id).state} "
          f"after {time.perf_counter() - started:.0f} s more")  # fmt: skip
    print(f"  idle 2-step generation {idle:.2f} s; during the job: " + ", ".join(f"{value:.2f} s" for value in waits))
    print(f"  engine held by one chunk: longest {max(holds):.1f} s over {len(holds)} chunks")
    space.jobs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("long", "heavy", "both"), default="both")
    parser.add_argument("--generations", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        if args.scenario in ("long", "both"):
            long_job(Path(folder) / "long", args.generations)
        if args.scenario in ("heavy", "both"):
            heavy_job(Path(folder) / "heavy")


if __name__ == "__main__":
    main()
