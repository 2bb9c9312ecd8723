"""LoRA training speed on a FLUX.1-dev-sized transformer with random weights (no download).

    python benchmarks/gpu_train.py [--steps 20] [--presets bf16,low-memory] [--peak-tflops 989]

Builds FluxTransformer2DModel with FLUX.1-dev's configuration (19 double and 38 single
blocks, 24 heads of 128, guidance embedding) on the GPU, attaches a rank-16 LoRA with the
trainer's own code (`attach_adapter`, `flow_matching_loss`, same target modules) and trains
at 512x512 (a 64x64 latent: 1024 image tokens, 512 text tokens), batch 1:

- `bf16`: the base in bf16, LoRA weights in fp32, autocast bf16, AdamW, no checkpointing;
- `low-memory`: the base in nf4 (bitsandbytes, loaded from a temporary `save_pretrained`),
  8-bit AdamW and gradient checkpointing (the "low memory (24 GB card)" preset).

It prints seconds per step, peak GPU memory, the time for 1000 steps, the cost of one
preemption of a training chunk by a generation (the state saved, the adapter off and on, the
text encoders and VAE of FLUX.1-dev's size moved off the GPU and back, and what a fresh worker
adds: `preemption.py`) as a share of a step, and the share of the card's dense bf16 rate reached, counting 2x the forward FLOPs per step (forward, plus the
backward pass to the activations; the frozen base gets no weight gradients; recomputation
under checkpointing is not counted as useful work). Targets on one H200: 1000 steps in
<= 3.5 minutes (bf16); <= 12 GB peak (low memory).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
TEXT_TOKENS, LATENT_SIDE = 512, 64  # 512 px: VAE /8, packed 2x2 -> 32x32 = 1024 image tokens


def forward_flops(transformer, inputs: dict) -> float:
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
    tokens = TEXT_TOKENS + (LATENT_SIDE // 2) ** 2
    width = FLUX_DEV["num_attention_heads"] * FLUX_DEV["attention_head_dim"]
    attention_layers = FLUX_DEV["num_layers"] + FLUX_DEV["num_single_layers"]
    return total[0] + attention_layers * 4.0 * tokens**2 * width


def random_transformer():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            transformer = FluxTransformer2DModel(**FLUX_DEV)
        finally:
            torch.set_default_dtype(previous)
    return transformer.eval()


def nf4_transformer(folder: Path):
    """The same random model, saved and loaded back in nf4 (as a 24 GB card would load FLUX.1-dev)."""
    from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

    random_transformer().save_pretrained(folder, max_shard_size="5GB")
    torch.cuda.empty_cache()
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return FluxTransformer2DModel.from_pretrained(folder, quantization_config=quantization, torch_dtype=torch.bfloat16).eval()


def run(preset: str, steps: int, peak_tflops: float) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.optimization import get_scheduler

    from benchmarks.preemption import encoder_moves, preemption_parts
    from lora_space.train.config import TrainConfig
    from lora_space.train.trainer import attach_adapter, flow_matching_loss, make_optimizer

    low_memory = preset == "low-memory"
    config = TrainConfig(model_name="flux-dev", resolution=512, network_dim=16, network_alpha=8, learning_rate=1e-4,
                         optimizer_type="AdamW8bit" if low_memory else "AdamW", gradient_checkpointing=low_memory,
                         quantize_base="nf4" if low_memory else "none")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        transformer = nf4_transformer(Path(folder)) if low_memory else random_transformer()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    parameters = attach_adapter(transformer, config, "bench", seed=0)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer, note = make_optimizer(list(parameters.values()), config, torch.device("cuda"))
    if note:
        print(f"  note: {note}")
    schedule = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, LATENT_SIDE, LATENT_SIDE, generator=generator).cuda()
    text = {"embeds": torch.randn(1, TEXT_TOKENS, 4096, generator=generator).cuda(), "pooled": torch.randn(1, 768, generator=generator).cuda(),
            "ids": torch.zeros(TEXT_TOKENS, 3, device="cuda")}  # fmt: skip

    def step() -> None:
        noise = torch.randn(latents.shape, generator=generator).cuda()
        indices = torch.randint(0, 1000, (1,), generator=generator)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = flow_matching_loss(transformer, latents, noise, indices, schedule, text)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(parameters.values()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: kernels chosen, optimizer state made
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    peak_gb = torch.cuda.max_memory_allocated() / 1024**3
    packed = torch.zeros(1, (LATENT_SIDE // 2) ** 2, 64, device="cuda", dtype=torch.bfloat16)
    inputs = dict(hidden_states=packed, timestep=torch.tensor([0.5], device="cuda", dtype=torch.bfloat16),
                  guidance=torch.tensor([3.5], device="cuda"), pooled_projections=text["pooled"].bfloat16(),
                  encoder_hidden_states=text["embeds"].bfloat16(), txt_ids=text["ids"],
                  img_ids=torch.zeros((LATENT_SIDE // 2) ** 2, 3, device="cuda"), return_dict=False)  # fmt: skip
    with torch.autocast("cuda", dtype=torch.bfloat16):
        useful = 2 * forward_flops(transformer, inputs)
    share = useful / seconds / (peak_tflops * 1e12)
    print(f"{preset:<11} {seconds:8.3f} s/step  {1000 * seconds / 60:6.2f} min per 1000 steps  peak {peak_gb:6.2f} GB  "
          f"{useful / seconds / 1e12:7.1f} TFLOP/s = {share:.1%} of {peak_tflops:g} TFLOP/s bf16")  # fmt: skip
    # One preemption of a chunk by a waiting generation, with the trainer's own code (benchmarks/preemption.py).
    scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=0, num_training_steps=config.max_train_steps)
    parts = preemption_parts(transformer, config, "bench", parameters, optimizer, scheduler, torch.cuda.synchronize)
    moves = encoder_moves("cuda", torch.cuda.synchronize)
    warm = parts["save"] + parts["warm"]
    print(f"{'':<11} one preemption: state saved {parts['save']:.2f} s + adapter off/on {parts['warm'] * 1000:.1f} ms = "
          f"{warm / seconds:.2f} steps in the same process; + text encoders and VAE off the GPU and back {moves:.2f} s = "
          f"{(warm + moves) / seconds:.2f} steps; a fresh worker adds {parts['cold']:.2f} s (adapter attached, state read back) = "
          f"{parts['cold'] / seconds:.2f} steps more")  # fmt: skip
    del transformer, optimizer, parameters
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--presets", default="bf16,low-memory")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 rate (H100/H200 SXM: 989)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_train.py needs a CUDA GPU; bench_train.py measures on a CPU.")
    print(f"{torch.cuda.get_device_name()}: FLUX.1-dev-sized transformer (random weights), rank 16, 512x512, batch 1")
    for preset in args.presets.split(","):
        run(preset.strip(), args.steps, args.peak_tflops)


if __name__ == "__main__":
    main()
