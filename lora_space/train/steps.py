"""The trainer's building blocks: adapters, batches, the flow-matching loss, devices, samples.

`trainer.run_chunk` and `session.Session` put these together; each is one step of diffusers'
FLUX DreamBooth LoRA recipe (see `trainer`'s docstring for the maths).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from lora_space.core.errors import TrainConfigError
from lora_space.generate.recipe import save_png
from lora_space.train.cache import Cache
from lora_space.train.checkpoint import SAMPLE_PROMPTS, JobFiles, SampleName, write_json
from lora_space.train.config import TrainConfig
from lora_space.train.samples import sample_recipe

# diffusers' FLUX DreamBooth LoRA recipe: attention (image and text streams) and feed-forward layers.
TARGET_MODULES = [
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
]  # fmt: skip  (in single blocks only attn.to_q/k/v match, as in the recipe)
GUIDANCE = 3.5  # the recipe's --guidance_scale default, and the Generate tab's default
MAX_GRAD_NORM = 1.0
VALIDATION_SIGMAS = (0.25, 0.5, 0.75)  # fixed noise levels: validation losses are comparable over time
SAMPLE_STEPS = 20
OVERFIT_WINDOW = 3


@dataclass
class Parallel:
    """Data parallelism: this process's rank among `world_size`, and how gradients are averaged."""

    rank: int = 0
    world_size: int = 1
    average: Callable[[torch.Tensor], torch.Tensor] | None = None
    gather: Callable[[list], list] | None = None  # every rank's list, concatenated in rank order

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def epoch_batches(rows: list[dict], train_indices: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: images of one bucket per batch, shuffled by (seed, epoch)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    by_bucket: dict[str, list[int]] = {}
    for index in train_indices:
        by_bucket.setdefault(rows[index]["bucket"], []).append(index)
    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket][:]
        rng.shuffle(members)
        batches += [members[start : start + batch_size] for start in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches


def batch_for_step(rows, train_indices, config: TrainConfig, step: int, parallel: Parallel) -> tuple[list[int], list[list[int]]]:
    """The batch this rank trains at `step` (0-based) and its epoch's order (saved as the data order)."""
    count = len(epoch_batches(rows, train_indices, config.train_batch_size, config.seed, 0))
    position = step * parallel.world_size + parallel.rank
    order = epoch_batches(rows, train_indices, config.train_batch_size, config.seed, position // count)
    return order[position % count], order


def lora_parameters(transformer: torch.nn.Module, adapter_name: str) -> dict[str, torch.nn.Parameter]:
    """The adapter's parameters by diffusers key (`transformer.<module>.lora_A.weight`), sorted."""
    found = {}
    for path, module in transformer.named_modules():
        if isinstance(module, BaseTunerLayer) and adapter_name in getattr(module, "lora_A", {}):
            found[f"transformer.{path}.lora_A.weight"] = module.lora_A[adapter_name].weight
            found[f"transformer.{path}.lora_B.weight"] = module.lora_B[adapter_name].weight
    return dict(sorted(found.items()))


def rank_bound(transformer: torch.nn.Module) -> int:
    """The largest LoRA rank the targeted modules hold: min(in, out) over them (tiny: 32, FLUX.1-dev: 3072).

    A rank above it adds no capacity, and the one reader (`safefile`) refuses such a file.
    """
    paths = {path.removesuffix(".base_layer"): module for path, module in transformer.named_modules()}  # LoRA layers wrap them
    widths = [
        min(module.in_features, module.out_features)
        for path, module in paths.items()
        if isinstance(module, torch.nn.Linear) and any(path == target or path.endswith("." + target) for target in TARGET_MODULES)
    ]  # fmt: skip
    return min(widths) if widths else 0


def check_rank(transformer: torch.nn.Module, config: TrainConfig) -> None:
    """Refuse a `network_dim` above `rank_bound` of this base, naming the key and the bound.

    Raises:
        TrainConfigError: the rank is larger than the targeted modules allow.
    """
    bound = rank_bound(transformer)
    if bound and config.network_dim > bound:
        raise TrainConfigError(
            f"Training settings: network_dim (rank) {config.network_dim} is larger than this base model's layers allow "
            f"(at most {bound}: a rank is bounded by the smallest input or output width of the trained layers); "
            f"set network_dim to {bound} or less (the course uses 16-128)."
        )


def attach_adapter(transformer, config: TrainConfig, adapter_name: str, seed: int) -> dict[str, torch.nn.Parameter]:
    """Add a trainable LoRA under `adapter_name`, the only active one; A ~ N(0, 1/r) from `seed`, B = 0."""
    lora_config = LoraConfig(
        r=config.network_dim, lora_alpha=config.network_alpha, init_lora_weights="gaussian", target_modules=TARGET_MODULES
    )
    transformer.add_adapter(lora_config, adapter_name=adapter_name)
    parameters = lora_parameters(transformer, adapter_name)
    generator = torch.Generator().manual_seed(seed)  # our own RNG: the global one is the process's
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.data = parameter.data.float()  # LoRA weights and their optimizer state in fp32
            if name.endswith("lora_A.weight"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / config.network_dim)
            else:
                parameter.zero_()
    activate_adapter(transformer, adapter_name, parameters)
    return parameters


def activate_adapter(transformer, adapter_name: str, parameters: dict[str, torch.nn.Parameter]) -> None:
    """Make `adapter_name` the only active adapter and its `parameters` the only trainable ones.

    Done when the adapter is attached, and again when a parked session resumes: generations in
    between switched it off and may have toggled `requires_grad` (peft's `set_adapter`).
    """
    transformer.set_adapter(adapter_name)
    for module in transformer.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(True)
            module.set_adapter(adapter_name)  # trainable: ours only
    for parameter in transformer.parameters():
        parameter.requires_grad_(False)
    for parameter in parameters.values():
        parameter.requires_grad_(True)


def reactivate_adapter(transformer, layers: list[BaseTunerLayer], adapter_name: str, parameters: dict[str, torch.nn.Parameter]) -> None:
    """`activate_adapter` for a parked adapter whose pipeline was lent again (`Engine.lend`), in a
    fraction of its time: the lend switched every adapter off, so only our layers and the
    `requires_grad` flags (set back by the lend, toggled by generations' adapter loads) need setting."""
    for parameter in transformer.parameters():
        parameter.requires_grad_(False)
    for layer in layers:
        layer._active_adapter = [adapter_name]  # peft's own fields behind `set_adapter`, as `Engine._activate` sets them
        layer._disable_adapters = False
    for parameter in parameters.values():
        parameter.requires_grad_(True)


def make_optimizer(parameters: list[torch.nn.Parameter], config: TrainConfig, device: torch.device) -> tuple[torch.optim.Optimizer, str | None]:
    """AdamW, or bitsandbytes' AdamW8bit where it can run; returns a note when it fell back."""
    if config.optimizer_type == "AdamW8bit":
        if device.type == "cuda":
            try:
                import bitsandbytes

                return bitsandbytes.optim.AdamW8bit(parameters, lr=config.learning_rate, weight_decay=1e-4), None
            except ImportError:
                pass
        note = "AdamW8bit needs bitsandbytes on a CUDA GPU; this run uses AdamW."
        return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=1e-4), note
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=1e-4), None


def flow_matching_loss(
    transformer, latents: torch.Tensor, noise: torch.Tensor, indices: torch.Tensor, schedule: FlowMatchEulerDiscreteScheduler, text: dict
) -> torch.Tensor:
    """The recipe's loss for one batch of latents (B, C, H, W) at the scheduler's timestep `indices`."""
    batch, channels, height, width = latents.shape
    dtype = transformer.dtype
    timesteps = schedule.timesteps[indices].to(latents.device)
    sigmas = schedule.sigmas[indices].to(latents.device, latents.dtype).view(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
    image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, latents.device, dtype)
    guidance = torch.full((batch,), GUIDANCE, device=latents.device) if transformer.config.guidance_embeds else None
    prediction = transformer(
        hidden_states=packed.to(dtype),
        timestep=(timesteps / 1000).to(dtype),
        guidance=guidance,
        pooled_projections=text["pooled"].to(dtype),
        encoder_hidden_states=text["embeds"].to(dtype),
        txt_ids=text["ids"].to(dtype),
        img_ids=image_ids,
        return_dict=False,
    )[0]
    # Unpack (B, HW/4, 4C) back to (B, C, H, W), the inverse of `_pack_latents`.
    prediction = prediction.view(batch, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    prediction = prediction.reshape(batch, channels, height, width)
    target = noise - latents
    return ((prediction.float() - target.float()) ** 2).reshape(batch, -1).mean(dim=1).mean()


def overfitting_warning(loss: list[list[float]], val_loss: list[list[float]]) -> str | None:
    """Validation loss rising `OVERFIT_WINDOW` times in a row while the training loss falls."""
    if len(val_loss) <= OVERFIT_WINDOW:
        return None
    recent = [value for _, value in val_loss[-OVERFIT_WINDOW - 1 :]]
    if not all(later > earlier for earlier, later in zip(recent, recent[1:])):
        return None
    start = val_loss[-OVERFIT_WINDOW - 1][0]
    before = [value for step, value in loss if step <= start][-10:]
    after = [value for step, value in loss if step > start][-10:]
    if before and after and sum(after) / len(after) < sum(before) / len(before):
        return (
            f"Possible overfitting at step {val_loss[-1][0]}: the validation loss rose {OVERFIT_WINDOW} times in a row "
            "while the training loss fell. Use an earlier checkpoint, fewer steps or a lower learning rate."
        )
    return None


class Devices:
    """Moves the VAE and text encoders off the GPU for the loop and back for encoding and samples (CPU: no-op)."""

    def __init__(self, pipe: FluxPipeline) -> None:
        self.pipe = pipe
        self.device = pipe.transformer.device
        self.away = False

    def park(self) -> None:
        if self.device.type == "cuda" and not self.away:
            for module in (self.pipe.vae, self.pipe.text_encoder, self.pipe.text_encoder_2):
                module.to("cpu")
            torch.cuda.empty_cache()
            self.away = True

    def restore(self) -> None:
        if self.away:
            for module in (self.pipe.vae, self.pipe.text_encoder, self.pipe.text_encoder_2):
                module.to(self.device)
            self.away = False


def set_enabled(layers: list[BaseTunerLayer], enabled: bool) -> None:
    """Switch the job's adapter on or off in its layers (a sample at strength 0, a parked session)."""
    for layer in layers:
        layer._disable_adapters = not enabled


def sample_image(pipe, layers, config: TrainConfig, prompts: list[str], number: int, strength: int, files: JobFiles, step: int) -> str:
    """One sample image: prompt `number` at LoRA strength 0 or 1 with the job's seed; returns its file name.

    Each prompt is drawn at strength 0 and 1 with the same seed, so whether the LoRA is learning
    shows. `samples/prompts.json` lists the prompts by number (`..._prompt<number>_...png`), for Publish.
    """
    files.samples.mkdir(exist_ok=True)
    write_json(files.samples / SAMPLE_PROMPTS, prompts)
    side = config.resolution
    set_enabled(layers, strength == 1)
    try:
        with torch.no_grad():
            generator = torch.Generator("cpu").manual_seed(config.seed)
            image: Image.Image = pipe(
                prompt=prompts[number], num_inference_steps=SAMPLE_STEPS, guidance_scale=GUIDANCE, width=side, height=side,
                generator=generator,
            ).images[0]  # fmt: skip
    finally:
        set_enabled(layers, True)
    path = files.samples / SampleName(step, number, strength).file_name
    recipe = sample_recipe(config, prompts[number], strength=strength, job_id=files.root.name, steps=SAMPLE_STEPS, guidance=GUIDANCE)
    save_png(image, path, recipe)  # A1111 `parameters` and the JSON recipe
    return path.name


def validation_image_loss(transformer, cache: Cache, index: int, schedule, config: TrainConfig) -> float:
    """Held-out image `index`'s loss summed over `VALIDATION_SIGMAS`, with the same noise every time.

    The noise comes from a generator of the image's own, so the images can be measured in any
    chunks and the validation loss (their mean) is the same.
    """
    generator = torch.Generator().manual_seed((config.seed + 1) * 1_000_003 + index)
    points = [int(round((1 - sigma) * (len(schedule.timesteps) - 1))) for sigma in VALIDATION_SIGMAS]
    total = 0.0
    with torch.no_grad():
        latents = cache.latents(index, generator=None)
        for point in points:
            noise = torch.randn(latents.shape, generator=generator).to(latents.device)
            total += float(flow_matching_loss(transformer, latents, noise, torch.tensor([point]), schedule, cache.text([index])))
    return total
