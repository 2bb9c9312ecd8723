"""The drawing tiny model: its pre-training, its speed, and what the example LoRA changes.

    python benchmarks/bench_tiny_draw.py [--skip-lora] [--threads 2]

1. Pre-training, read from the shipped weights' header (`lora_space/tiny/tiny_draw.safetensors`,
   written by `python -m lora_space.train.pretrain_tiny`): settings, steps, minutes, the machine's load
   while it ran, and the loss curve (the mean loss of each stretch of steps).
2. Generation: seconds per 64x64 image at the Generate tab's default steps in tiny mode, on 1 and
   on `--threads` CPU threads (the median of 5 after a warm-up), with the machine's load beside it.
3. The example LoRA: `examples/flat_shapes.zip` trained with its own `config.json` through the
   app's job manager, as the Train tab runs it, timed from *Start* to the LoRA in the library;
   then the mean absolute change of the picture (0..255) at strength 1 against 0, over a few
   prompts and seeds at the default steps. The issue asks for at least 20/255 in under 3 minutes.

Figures on a shared machine drift: the load average is printed with each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = [
    "a red circle on a blue background",
    "a yellow square on a green background",
    "a white star on a purple background",
    "a large orange triangle on a grey background",
]
SEEDS = (0, 1, 2)


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def curve(steps: list[int], losses: list[float], rows: int = 12) -> str:
    """The loss log as a short table with a bar per row (log scale)."""
    import math

    picked = sorted({round(index * (len(steps) - 1) / (rows - 1)) for index in range(rows)})
    low, high = math.log(min(losses)), math.log(max(losses))
    lines = []
    for index in picked:
        width = 1 + round(39 * (math.log(losses[index]) - low) / max(high - low, 1e-9))
        lines.append(f"  step {steps[index]:>6}  loss {losses[index]:.4f}  {'#' * width}")
    return "\n".join(lines)


def pretraining_report() -> None:
    from lora_space.lora.safefile import read_local_header
    from lora_space.tiny.draw import WEIGHTS_FILE

    header = read_local_header(WEIGHTS_FILE)
    facts = json.loads(header.metadata["pretraining"])
    config = facts["config"]
    print(f"1. Pre-training ({WEIGHTS_FILE.name}, {header.file_size / 1e6:.1f} MB, fp16)")
    print(f"  {facts['steps_done']} steps of {config['batch_size']} scenes, AdamW {config['learning_rate']}, "
          f"EMA {config['ema_decay']}, seed {config['seed']}, {facts['threads']} thread(s)")  # fmt: skip
    print(f"  {facts['minutes']} minutes; {facts['load']}")
    print(curve(facts["log"]["steps"], facts["log"]["loss"]))


def generation_report(threads: int) -> None:
    import torch

    from lora_space.core.settings import TINY, TINY_STEPS
    from lora_space.tiny.draw import build_drawing_pipeline

    pipe = build_drawing_pipeline()
    pipe.set_progress_bar_config(disable=True)
    steps = TINY_STEPS[TINY]
    print(f"2. Generation: one 64x64 image at {steps} steps (the default in tiny mode)")
    for count in sorted({1, threads}):
        torch.set_num_threads(count)
        times = []
        for run in range(6):
            started = time.perf_counter()
            pipe(PROMPTS[0], num_inference_steps=steps, width=64, height=64, generator=torch.Generator().manual_seed(run))
            times.append(time.perf_counter() - started)
        print(f"  {count} thread(s): median {statistics.median(times[1:]):.2f} s (min {min(times[1:]):.2f}, max {max(times[1:]):.2f}); {load()}")


def lora_report() -> None:
    import numpy as np
    from PIL import Image

    from lora_space.core.settings import TINY, TINY_STEPS, Settings
    from lora_space.generate.base_model import load_base_pipeline
    from lora_space.generate.engine import Engine
    from lora_space.generate.request import Options
    from lora_space.service import LoraSpace
    from lora_space.visitors.owners import Visitor

    visitor = Visitor("browser", "b" * 32)
    with tempfile.TemporaryDirectory() as root:
        settings = Settings.from_env({"LORA_SPACE_BASE_MODEL": TINY, "LORA_SPACE_LORA_DIR": f"{root}/loras",
                                      "LORA_SPACE_DATA_DIR": f"{root}/data", "HF_HUB_OFFLINE": "1"})  # fmt: skip
        space = LoraSpace(settings, Engine(load_base_pipeline(settings)))
        example = REPO / "examples" / "flat_shapes.zip"
        print("3. The example LoRA: examples/flat_shapes.zip with its own config.json")
        started = time.perf_counter()
        job = space.jobs.start(example, {}, visitor=visitor)
        while (status := space.jobs.status(job.job_id)).state in ("queued", "running"):
            time.sleep(0.5)
        seconds = time.perf_counter() - started
        space.jobs.close()
        assert status.state == "done", status.error
        print(f"  {status.config['max_train_steps']} steps (batch {status.config['train_batch_size']}, rank {status.config['network_dim']}, "
              f"lr {status.config['learning_rate']}) in {seconds:.0f} s, from Start to the LoRA in the library; {load()}")  # fmt: skip
        changes = []
        for prompt in PROMPTS:
            for seed in SEEDS:
                options = Options(seed=seed, steps=TINY_STEPS[TINY], width=64, height=64)
                pictures = [
                    np.asarray(Image.open(space.generate(prompt, [{"source": status.lora_name, "strength": strength}], options, visitor=visitor).files[0]).convert("RGB"), dtype=np.float64)
                    for strength in (0.0, 1.0)
                ]  # fmt: skip
                changes.append(np.abs(pictures[1] - pictures[0]).mean())
        print(f"  mean change at strength 1 against 0: {np.mean(changes):.1f}/255 over {len(PROMPTS)} prompts x {len(SEEDS)} seeds "
              f"(min {min(changes):.1f}, max {max(changes):.1f}); the issue asks for 20/255 in under 180 s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the second generation timing")
    parser.add_argument("--skip-lora", action="store_true", help="skip the example LoRA (the slow part)")
    args = parser.parse_args()
    pretraining_report()
    generation_report(args.threads)
    if not args.skip_lora:
        import torch

        torch.set_num_threads(1)
        lora_report()


if __name__ == "__main__":
    main()
