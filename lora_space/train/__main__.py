"""Train a LoRA from the command line, on one device or data-parallel on several.

    python -m lora_space.train --dataset data.zip --config config.json --output runs/mystyle
    torchrun --nproc_per_node 4 -m lora_space.train --dataset data.zip --config config.json --output runs/mystyle
    accelerate launch -m lora_space.train --dataset ...            # the same, through accelerate

The run is the Space's trainer (`trainer.run_chunk`) on a job folder at `--output`: every
`--chunk-steps` steps the full state is saved, so `--resume` continues a run that was stopped
or killed and ends with the same weights. With N processes each trains on its own batches
and the LoRA gradients are averaged (the effective batch is N x train_batch_size); rank 0
writes the files. The base model is `LORA_SPACE_BASE_MODEL` (default: FLUX.1-dev on CUDA,
else `tiny`); `quantize_base` (nf4, fp8) loads it quantised, on CUDA only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import LoraSpaceError, TrainConfigError


def base_quantization(quantize: str):
    """diffusers' quantization config for the frozen transformer: `nf4` (bitsandbytes) or `fp8` (torchao).

    Building it imports nothing heavy; bitsandbytes or torchao is imported when the model loads.
    """
    import torch

    if quantize == "nf4":
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    if quantize == "fp8":
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig

        return TorchAoConfig(Float8WeightOnlyConfig())  # diffusers 0.42 takes a torchao config object, not a name
    raise TrainConfigError(f"quantize_base {quantize!r} is unknown; use none, nf4 or fp8.")


def load_pipeline(base_model: str, quantize: str, device):
    """The base pipeline for training; the transformer quantised (nf4 / fp8) when asked, on CUDA."""
    import torch

    from ..base_model import load_base_pipeline
    from ..settings import Settings
    from ..tiny import build_tiny_pipeline

    if quantize != "none" and device.type != "cuda":
        raise TrainConfigError(f"quantize_base {quantize} needs a CUDA GPU; set it to none on this machine.")
    if base_model == "tiny":
        return build_tiny_pipeline().to(device)
    if quantize == "none":
        return load_base_pipeline(Settings.from_env()).to(device)
    from diffusers import FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(
        base_model, subfolder="transformer", quantization_config=base_quantization(quantize), torch_dtype=torch.bfloat16
    )
    return FluxPipeline.from_pretrained(base_model, transformer=transformer, torch_dtype=torch.bfloat16).to(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_space.train", description="Train a FLUX LoRA from a dataset zip.")
    parser.add_argument("--dataset", help="the dataset zip (images/ + captions/, flat pairs, or metadata.jsonl)")
    parser.add_argument("--config", help="a config.json with the course's names (its values win over the zip's)")
    parser.add_argument("--output", required=True, help="the run's folder: state, checkpoints, samples, final LoRA")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its last state")
    parser.add_argument("--chunk-steps", type=int, default=50, help="steps between full saves of the state")
    args = parser.parse_args(argv)

    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from ..settings import Settings
    from .checkpoint import JobFiles, read_json
    from .config import TrainConfig
    from .prepare import prepare_job
    from .trainer import Parallel, run_chunk

    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # cpu=True: torchrun's processes form a CPU group
    files = JobFiles(Path(args.output))
    try:
        # 1. The run folder: the zip read and the config checked once, by rank 0.
        if accelerator.is_main_process and not args.resume:
            if not args.dataset:
                raise TrainConfigError("Give --dataset ZIP (or --resume to continue the run in --output).")
            values = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
            files.root.mkdir(parents=True, exist_ok=True)
            settings = Settings.from_env()
            prepared = prepare_job(files, args.dataset, values, is_tiny=settings.is_tiny)
            print(f"{prepared.report.images_used} images ({prepared.report.train_count} train), {prepared.config.max_train_steps} steps")
            for note in prepared.config.notes + prepared.report.notes:
                print(f"note: {note}")
        accelerator.wait_for_everyone()
        if not files.config.exists():
            raise TrainConfigError(f"{files.root} holds no run to resume; start one with --dataset.")
        config = TrainConfig(**read_json(files.config))
        # 2. The model, the same on every rank; rank 0 encodes the dataset once.
        pipe = load_pipeline(config.model_name, config.quantize_base, accelerator.device)
        if accelerator.is_main_process and config.cache_latents:
            from .cache import build_cache

            build_cache(pipe, read_json(files.rows), files, config)  # what is not in the cache yet
        accelerator.wait_for_everyone()
        # 3. Chunks until done: each saves the full state; all ranks read it at the next start.
        parallel = Parallel(
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            average=(lambda tensor: accelerator.reduce(tensor, reduction="mean")) if accelerator.num_processes > 1 else None,
            gather=gather_object if accelerator.num_processes > 1 else None,
        )
        while True:
            result = run_chunk(pipe, files.root, adapter_name="cli_train", max_steps=args.chunk_steps, parallel=parallel)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                loss = (read_json(files.progress, {}) or {}).get("loss", [[0, float("nan")]])[-1][1]
                print(f"step {result.step}/{result.total_steps} loss {loss:.4f} ({accelerator.num_processes} process(es))")
            if result.finished:
                break
        if accelerator.is_main_process:
            print(f"LoRA written to {files.final}")
        return 0
    except LoraSpaceError as error:
        print(f"lora_space.train: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from ..gpu import hide_cuda_only_packages

    hide_cuda_only_packages()  # on a CPU: bitsandbytes and torchao unused, and slow to import
    raise SystemExit(main())
