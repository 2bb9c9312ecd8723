"""LoRA training speed on a FLUX.1-dev-sized transformer with random weights (no download).

    python benchmarks/gpu_train.py [--steps 20] [--presets bf16,low-memory,fp8] [--peak-tflops 989]

Builds FluxTransformer2DModel with FLUX.1-dev's configuration (19 double and 38 single
blocks, 24 heads of 128, guidance embedding) on the GPU, attaches a rank-16 LoRA with the
trainer's own code (`attach_adapter`, `flow_matching_loss`, same target modules) and trains
at 512x512 (a 64x64 latent: 1024 image tokens, 512 text tokens), batch 1:

- `bf16`: the base in bf16, LoRA weights in fp32, autocast bf16, AdamW, no checkpointing;
- `low-memory`: the base in nf4 (bitsandbytes, loaded from a temporary `save_pretrained`),
  8-bit AdamW and gradient checkpointing (the "low memory (24 GB card)" preset);
- `fp8`: the base in fp8 weights (torchao, loaded the same way), 8-bit AdamW and checkpointing.

It prints seconds per step, peak GPU memory (beyond what was allocated before the preset began),
the time for 1000 steps, the cost of one preemption of a training chunk by a generation (the
state saved, the adapter off and on, on a GPU the text encoders and VAE of FLUX.1-dev's size moved
off it and back, and what a fresh worker adds: `preemption.py`) as a share of a step, and the share of the card's dense bf16 rate reached, counting 2x the
forward FLOPs per step (forward, plus the backward pass to the activations; the frozen base
gets no weight gradients; recomputation under checkpointing is not counted as useful work). Targets on one H200: 1000 steps in
<= 3.5 minutes (bf16); <= 12 GB peak (low memory). `gpu_check.py` calls `run` for its
training table (and, with `--dry-run`, at `DRY` sizes on the CPU, where a quantised base and
8-bit AdamW fall back as the trainer does and the figures say so).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
# The same architecture at test size: 64 input channels (16 latent channels packed 2x2) as in FLUX.
TINY_FLUX = dict(
    patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8),
)  # fmt: skip
PRESETS = ("bf16", "low-memory", "fp8")


@dataclass(frozen=True)
class Scale:
    """The model and batch measured: FLUX.1-dev's, or `DRY` for a run of the same code on a CPU."""

    transformer: dict
    text_tokens: int = 512
    latent_side: int = 64  # 512 px: VAE /8, packed 2x2 -> 32x32 = 1024 image tokens


FULL = Scale(FLUX_DEV)
DRY = Scale(TINY_FLUX, text_tokens=16, latent_side=8)


def forward_flops(transformer, inputs: dict, scale: Scale = FULL) -> float:
    """FLOPs of one forward pass: every Linear (2 x in x out per row) plus attention (4 x T^2 x width)."""
    total = [0.0]

    def count(module, args, output):
        rows = args[0].numel() // args[0].shape[-1]
        total[0] += 2.0 * rows * module.in_features * module.out_features

    hooks = [module.register_forward_hook(count) for module in transformer.modules() if type(module) is torch.nn.Linear]
    with torch.no_grad():
        transformer(**inputs)
    for hook in hooks:
        hook.remove()
    config = scale.transformer
    tokens = scale.text_tokens + (scale.latent_side // 2) ** 2
    width = config["num_attention_heads"] * config["attention_head_dim"]
    return total[0] + (config["num_layers"] + config["num_single_layers"]) * 4.0 * tokens**2 * width


def random_transformer(config: dict = FLUX_DEV, device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    """FluxTransformer2DModel with random weights, made on `device` in `dtype` (no float32 copy first)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            transformer = FluxTransformer2DModel(**config)
        finally:
            torch.set_default_dtype(previous)
    return transformer.eval()


def quantized_transformer(folder: Path, quantize: str, config: dict = FLUX_DEV):
    """The same random model, saved and loaded back quantised (`nf4` or `fp8`), as a 24 GB card would load FLUX.1-dev.

    The quantization config is the CLI's (`lora_space.train.__main__.base_quantization`).
    """
    from diffusers import FluxTransformer2DModel

    from lora_space.train.__main__ import base_quantization

    if not (folder / "config.json").exists():
        random_transformer(config).save_pretrained(folder, max_shard_size="5GB")
        torch.cuda.empty_cache()
    return FluxTransformer2DModel.from_pretrained(
        folder, quantization_config=base_quantization(quantize), torch_dtype=torch.bfloat16, device_map="cuda"
    ).eval()  # quantised on the GPU as it loads


def run(preset: str, steps: int, peak_tflops: float, *, scale: Scale = FULL, device: str = "cuda", saved: Path | None = None) -> dict:
    """Train `steps` steps with `preset` after 3 warm-up steps; returns the figures (also printed).

    Args:
        preset: one of `PRESETS`.
        steps: timed steps.
        peak_tflops: the card's dense bf16 rate, for the share.
        scale: `FULL` (FLUX.1-dev) or `DRY`.
        device: `cuda`, or `cpu` for a dry run: the base stays unquantised and AdamW8bit falls back (said in `notes`).
        saved: a folder for the random model saved once for the quantised presets (default: a temporary one).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.optimization import get_scheduler

    from benchmarks.preemption import encoder_moves, preemption_parts
    from lora_space.train.config import TrainConfig
    from lora_space.train.trainer import attach_adapter, flow_matching_loss, make_optimizer

    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is unknown; use one of {', '.join(PRESETS)}.")
    cuda = device == "cuda"
    quantize = {"low-memory": "nf4", "fp8": "fp8"}.get(preset, "none")
    notes = []
    if quantize != "none" and not cuda:
        notes.append(f"{quantize} base needs CUDA: unquantised here")
        quantize = "none"
    config = TrainConfig(model_name="flux-dev", resolution=8 * scale.latent_side, network_dim=16, network_alpha=8, learning_rate=1e-4,
                         optimizer_type="AdamW" if preset == "bf16" else "AdamW8bit", gradient_checkpointing=preset != "bf16",
                         quantize_base=quantize)  # fmt: skip
    dtype = torch.bfloat16 if cuda else torch.float32
    baseline = torch.cuda.memory_allocated() if cuda else 0  # what others hold (gpu_check's pipelines): not ours
    if quantize == "none":
        transformer = random_transformer(scale.transformer, device, dtype)
    elif saved is not None:
        transformer = quantized_transformer(saved, quantize, scale.transformer)
    else:
        with tempfile.TemporaryDirectory() as folder:
            transformer = quantized_transformer(Path(folder), quantize, scale.transformer)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    parameters = attach_adapter(transformer, config, "bench", seed=0)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer, note = make_optimizer(list(parameters.values()), config, torch.device(device))
    if note:
        notes.append(note)
    schedule = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    generator = torch.Generator().manual_seed(0)
    side, tokens, joint = scale.latent_side, scale.text_tokens, scale.transformer["joint_attention_dim"]
    pooled = scale.transformer["pooled_projection_dim"]
    latents = torch.randn(1, 16, side, side, generator=generator).to(device)
    text = {"embeds": torch.randn(1, tokens, joint, generator=generator).to(device), "pooled": torch.randn(1, pooled, generator=generator).to(device),
            "ids": torch.zeros(tokens, 3, device=device)}  # fmt: skip

    def step() -> None:
        noise = torch.randn(latents.shape, generator=generator).to(device)
        indices = torch.randint(0, 1000, (1,), generator=generator)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = flow_matching_loss(transformer, latents, noise, indices, schedule, text)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(parameters.values()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: kernels chosen, optimizer state made
        step()
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    seconds = (time.perf_counter() - started) / steps
    peak_gb = (torch.cuda.max_memory_allocated() - baseline) / 1024**3 if cuda else None
    packed = torch.zeros(1, (side // 2) ** 2, scale.transformer["in_channels"], device=device, dtype=dtype)
    inputs = dict(hidden_states=packed, timestep=torch.tensor([0.5], device=device, dtype=dtype),
                  guidance=torch.tensor([3.5], device=device), pooled_projections=text["pooled"].to(dtype),
                  encoder_hidden_states=text["embeds"].to(dtype), txt_ids=text["ids"],
                  img_ids=torch.zeros((side // 2) ** 2, 3, device=device), return_dict=False)  # fmt: skip
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        useful = 2 * forward_flops(transformer, inputs, scale)
    figures = {
        "preset": preset, "seconds_per_step": seconds, "minutes_per_1000_steps": 1000 * seconds / 60, "peak_gb": peak_gb,
        "tflops": useful / seconds / 1e12, "share_of_peak": useful / seconds / (peak_tflops * 1e12), "notes": notes,
    }  # fmt: skip
    peak = f"peak {peak_gb:6.2f} GB" if peak_gb is not None else "peak (CPU: not measured)"
    print(f"{preset:<11} {seconds:8.3f} s/step  {figures['minutes_per_1000_steps']:6.2f} min per 1000 steps  {peak}  "
          f"{figures['tflops']:7.1f} TFLOP/s = {figures['share_of_peak']:.1%} of {peak_tflops:g} TFLOP/s bf16"
          + "".join(f"\n  note: {text}" for text in notes))  # fmt: skip
    # One preemption of a chunk by a waiting generation, with the trainer's own code (benchmarks/preemption.py).
    scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=0, num_training_steps=config.max_train_steps)
    parts = preemption_parts(transformer, config, "bench", parameters, optimizer, scheduler, synchronize)
    moves = encoder_moves(device, synchronize) if cuda else 0.0  # on a CPU nothing moves
    warm = parts["save"] + parts["warm"]
    figures |= {
        "preemption_save_seconds": parts["save"], "preemption_adapter_seconds": parts["warm"], "preemption_encoders_seconds": moves,
        "preemption_steps": (warm + moves) / seconds, "fresh_worker_extra_seconds": parts["cold"],
    }  # fmt: skip
    print(f"{'':<11} one preemption: state saved {parts['save']:.2f} s + adapter off/on {parts['warm'] * 1000:.1f} ms"
          f" + encoders and VAE off the GPU and back {moves:.2f} s = {figures['preemption_steps']:.2f} steps;"
          f" a fresh worker adds {parts['cold']:.2f} s (adapter attached, state read back) = {parts['cold'] / seconds:.2f} steps")  # fmt: skip
    del transformer, optimizer, parameters
    if cuda:
        torch.cuda.empty_cache()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--presets", default="bf16,low-memory")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 rate (H100/H200 SXM: 989)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_train.py needs a CUDA GPU; bench_train.py measures on a CPU (gpu_check.py --dry-run runs this code tiny).")
    print(f"{torch.cuda.get_device_name()}: FLUX.1-dev-sized transformer (random weights), rank 16, 512x512, batch 1")
    with tempfile.TemporaryDirectory() as folder:  # the random model saved once for the quantised presets
        for preset in args.presets.split(","):
            run(preset.strip(), args.steps, args.peak_tflops, saved=Path(folder))


if __name__ == "__main__":
    main()
