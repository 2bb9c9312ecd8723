"""Training speed and memory on this CPU, with and without the latent/embedding cache and
gradient checkpointing, timed in turns in one run.

    python benchmarks/bench_train.py [--rounds 2] [--steps 4] [--diffusers-script PATH]

The model is FLUX-shaped and wide enough for the matrix work to dominate (the tiny pipeline
with a 256-wide, 6-block transformer), written with `save_pretrained` so that any trainer can
load it. The run is the course's settings scaled down: resolution 1024 -> 128, batch 2,
rank 32 -> 8 (alpha half the rank), AdamW. Each measurement is a fresh process (so that its
peak memory is its own); the variants take turns, round after round, and the table shows
the median seconds per step and the peak resident memory.

`--diffusers-script` runs a copy of diffusers' `examples/dreambooth/train_dreambooth_lora_flux.py`
(not in the wheel; supply your own) on the same model, images and settings, timing
`max_train_steps = 2 + steps` against `2` so start-up cancels out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WIDE = dict(num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=8, axes_dims_rope=(8, 12, 12))
RUN = dict(model_name="tiny", resolution=128, train_batch_size=2, network_dim=8, network_alpha=4, learning_rate=5e-4,
           lr_scheduler="constant", mixed_precision="no", validation_split=0.0, sample_every=0, checkpoint_every=0,
           trigger_word="redstyle", seed=0)  # fmt: skip
VARIANTS = {
    "cached, checkpointing": dict(cache_latents=True, gradient_checkpointing=True),
    "cached, no checkpointing": dict(cache_latents=True, gradient_checkpointing=False),
    "encoded every step, checkpointing": dict(cache_latents=False, gradient_checkpointing=True),
    "encoded every step, no checkpointing": dict(cache_latents=False, gradient_checkpointing=False),
}


def child(model_dir: Path, zip_path: Path, variant: str, steps: int) -> dict:
    """One measurement in this (fresh) process: warm up 2 steps, then time `steps` steps."""
    import torch
    from diffusers import FluxPipeline

    from lora_space.train.checkpoint import JobFiles, read_json
    from lora_space.train.prepare import prepare_job
    from lora_space.train.trainer import run_chunk

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    pipe = FluxPipeline.from_pretrained(model_dir)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as folder:
        files = JobFiles(Path(folder))
        prepare_job(files, zip_path, RUN | VARIANTS[variant] | {"max_train_steps": steps + 2}, is_tiny=True)
        run_chunk(pipe, files.root, adapter_name="warm", max_steps=2)  # builds the cache (when cached), warms up
        run_chunk(pipe, files.root, adapter_name="timed", max_steps=steps)
        per_step = read_json(files.progress)["seconds_per_step"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_per_step": per_step, "peak_mb": peak, "model_loaded_mb": loaded}


def diffusers_recipe(script: Path, model_dir: Path, images: Path, steps: int, *, cached: bool, checkpointing: bool) -> dict:
    """diffusers' own recipe on the same model and settings; seconds per step from two lengths."""

    def run(max_steps: int, output: Path) -> tuple[float, float]:
        command = [sys.executable, str(script), "--pretrained_model_name_or_path", str(model_dir), "--instance_data_dir", str(images),
                   "--instance_prompt", "redstyle", "--resolution", str(RUN["resolution"]), "--train_batch_size", str(RUN["train_batch_size"]),
                   "--rank", str(RUN["network_dim"]), "--learning_rate", str(RUN["learning_rate"]), "--lr_scheduler", "constant",
                   "--max_train_steps", str(max_steps), "--output_dir", str(output), "--mixed_precision", "no", "--seed", "0",
                   "--checkpointing_steps", "100000"]  # fmt: skip
        command += ["--cache_latents"] * cached + ["--gradient_checkpointing"] * checkpointing
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            raise RuntimeError(f"the diffusers script failed:\n{process.stderr.read().decode()[-2000:]}")
        return time.perf_counter() - started, usage.ru_maxrss / 1024

    with tempfile.TemporaryDirectory() as folder:
        short, _ = run(2, Path(folder) / "short")
        long, peak = run(2 + steps, Path(folder) / "long")
    return {"seconds_per_step": (long - short) / steps, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--diffusers-script", type=Path, help="a copy of diffusers' train_dreambooth_lora_flux.py")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "ZIP", "VARIANT", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, zip_path, variant, steps = args.child
        print(json.dumps(child(Path(model), Path(zip_path), variant, int(steps))))
        return

    from lora_space.tiny.model import build_tiny_pipeline
    from tests.train_factory import colour_zip

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        pipe = build_tiny_pipeline(transformer_overrides=WIDE)
        pipe.save_pretrained(root / "model")
        parameters = sum(parameter.numel() for parameter in pipe.transformer.parameters())
        del pipe
        zip_path = colour_zip(root / "data.zip", count=8, size=160)
        print(f"model: FLUX-shaped transformer, {parameters / 1e6:.1f} M parameters; {RUN['resolution']} px, batch "
              f"{RUN['train_batch_size']}, rank {RUN['network_dim']}; {args.steps} timed steps x {args.rounds} rounds, in turns")  # fmt: skip
        results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for round_number in range(args.rounds):
            for name in VARIANTS:
                command = [sys.executable, __file__, "--child", str(root / "model"), str(zip_path), name, str(args.steps)]
                done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
                results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"  round {round_number + 1}: {name}: {results[name][-1]['seconds_per_step']:.3f} s/step", flush=True)
        if args.diffusers_script:
            images = root / "images"
            images.mkdir()
            import zipfile

            with zipfile.ZipFile(zip_path) as archive:
                for member in archive.namelist():
                    if member.endswith(".png"):
                        (images / Path(member).name).write_bytes(archive.read(member))
            for cached in (True, False):
                name = f"diffusers recipe, {'--cache_latents' if cached else 'no cache'}, checkpointing"
                results[name] = [diffusers_recipe(args.diffusers_script, root / "model", images, args.steps, cached=cached, checkpointing=True)
                                 for _ in range(args.rounds)]  # fmt: skip
        reference = statistics.median(item["seconds_per_step"] for item in results["cached, checkpointing"])
        print(f"\n{'variant':<44}{'s/step':>9}{'steps/s':>9}{'vs cached+ckpt':>16}{'peak RSS MB':>13}")
        for name, items in results.items():
            seconds = statistics.median(item["seconds_per_step"] for item in items)
            peak = max(item["peak_mb"] for item in items)
            print(f"{name:<44}{seconds:>9.3f}{1 / seconds:>9.2f}{seconds / reference:>15.2f}x{peak:>13.0f}")


if __name__ == "__main__":
    main()
