"""The LoRA trainer: flow matching on the FLUX transformer, one chunk at a time.

`run_chunk` trains a job for a bounded number of steps or seconds on a pipeline it is lent
(the engine's own, see `Engine.lend`, or the CLI's), from the job folder's last full state
to a new one. Every chunk reads its state from disk and writes it back, so chunks can run in
different processes (ZeroGPU workers) and a job killed at any moment resumes from its last
state and ends with the same weights as an uninterrupted run.

The maths follows diffusers' FLUX DreamBooth LoRA recipe (`train_dreambooth_lora_flux.py`):
latents normalised with the VAE's shift and scale; t drawn uniformly from the scheduler's
training timesteps ("none" weighting); `x_t = (1 - sigma) x_0 + sigma * noise`; latents packed
2x2; the guidance embedding fed 3.5; the timestep divided by 1000; the target `noise - x_0`;
the loss the per-image mean squared error; gradients clipped to norm 1; LoRA with alpha over
rank on the attention and feed-forward Linear layers, A Gaussian and B zero.
"""

from __future__ import annotations

import errno
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_density_for_timestep_sampling
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from ..errors import JobError, TrainConfigError
from ..recipe import save_png
from .cache import Cache, LiveEncoder, build_cache
from .checkpoint import SAMPLE_PROMPTS, JobFiles, load_state, log_line, read_json, save_state, write_json
from .config import TrainConfig
from .lora_file import save_trained_lora
from .samples import sample_recipe

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


@dataclass
class ChunkResult:
    step: int
    total_steps: int
    finished: bool
    stopped: bool
    seconds_per_step: float | None = None
    warnings: list[str] = field(default_factory=list)


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
    transformer.set_adapter(adapter_name)
    for module in transformer.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(True)
            module.set_adapter(adapter_name)  # trainable: ours only
    for parameter in transformer.parameters():
        parameter.requires_grad_(False)
    parameters = lora_parameters(transformer, adapter_name)
    generator = torch.Generator().manual_seed(seed)  # our own RNG: the global one is the process's
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.data = parameter.data.float()  # LoRA weights and their optimizer state in fp32
            if name.endswith("lora_A.weight"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / config.network_dim)
            else:
                parameter.zero_()
            parameter.requires_grad_(True)
    return parameters


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


class _Devices:
    """Moves the VAE and text encoders off the GPU for the loop and back for samples (CPU: no-op)."""

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


def _set_enabled(layers: list[BaseTunerLayer], enabled: bool) -> None:
    for layer in layers:
        layer._disable_adapters = not enabled


def save_samples(pipe, layers, config: TrainConfig, prompts: list[str], files: JobFiles, step: int) -> list[str]:
    """The validation prompts at LoRA strength 0 and 1, same seed: whether the LoRA is learning shows.

    `samples/prompts.json` lists the prompts by number (`..._prompt<number>_...png`), for Publish.
    """
    files.samples.mkdir(exist_ok=True)
    write_json(files.samples / SAMPLE_PROMPTS, prompts)
    side = config.resolution
    saved = []
    with torch.no_grad():
        for number, prompt in enumerate(prompts):
            for strength in (0, 1):
                _set_enabled(layers, strength == 1)
                generator = torch.Generator("cpu").manual_seed(config.seed)
                image: Image.Image = pipe(
                    prompt=prompt, num_inference_steps=SAMPLE_STEPS, guidance_scale=GUIDANCE, width=side, height=side,
                    generator=generator,
                ).images[0]  # fmt: skip
                path = files.samples / f"step{step:06d}_prompt{number}_strength{strength}.png"
                recipe = sample_recipe(config, prompt, strength=strength, job_id=files.root.name, steps=SAMPLE_STEPS, guidance=GUIDANCE)
                save_png(image, path, recipe)  # A1111 `parameters` and the JSON recipe
                saved.append(path.name)
    _set_enabled(layers, True)
    return saved


def validation_loss(transformer, cache: Cache, indices: list[int], schedule, config: TrainConfig) -> float:
    """Mean loss over the held-out images at `VALIDATION_SIGMAS`, with the same noise every time."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    total, count = 0.0, 0
    points = [int(round((1 - sigma) * (len(schedule.timesteps) - 1))) for sigma in VALIDATION_SIGMAS]
    with torch.no_grad():
        for index in indices:
            latents = cache.latents(index, generator=None)
            for point in points:
                noise = torch.randn(latents.shape, generator=generator).to(latents.device)
                loss = flow_matching_loss(transformer, latents, noise, torch.tensor([point]), schedule, cache.text([index]))
                total, count = total + float(loss), count + 1
    return total / max(count, 1)


def run_chunk(
    pipe: FluxPipeline,
    job_dir: Path,
    *,
    adapter_name: str,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    parallel: Parallel | None = None,
) -> ChunkResult:
    """Train the job in `job_dir` from its last state for up to `max_steps` steps or `max_seconds`.

    The caller owns `pipe` for the call (under the engine's lock); on return the adapter is
    deleted and the pipeline is as it was (gradient checkpointing, modes, devices).

    Raises:
        TrainConfigError: the job's config cannot run here (a quantised base on a CPU).
    """
    parallel = parallel or Parallel()
    files = JobFiles(Path(job_dir))
    config = TrainConfig(**read_json(files.config))
    rows = read_json(files.rows)
    transformer = pipe.transformer
    device = transformer.device
    if config.quantize_base != "none" and device.type != "cuda":
        raise TrainConfigError(f"quantize_base {config.quantize_base} needs a CUDA GPU; set it to none on this machine.")
    check_rank(transformer, config)
    devices = _Devices(pipe)
    was_checkpointing = transformer.is_gradient_checkpointing
    modes = {module: module.training for module in transformer.modules()}
    step = 0
    try:
        # 1. The cached latents and caption embeddings (made by the first chunk), on the device.
        if config.cache_latents:
            cache = build_cache(pipe, rows, files, config) if not files.cache.exists() else Cache.load(files.cache, device)
            cache = cache.to(device)
            devices.park()
        else:  # encoded again at every step, the encoders stay on the device
            cache = LiveEncoder(pipe, rows, files, config)
        # 2. Our adapter, optimizer and schedule, then the last state if there is one.
        parameters = attach_adapter(transformer, config, adapter_name, config.seed)
        layers = [module for module in transformer.modules() if isinstance(module, BaseTunerLayer) and adapter_name in module.lora_A]
        optimizer, note = make_optimizer(list(parameters.values()), config, device)
        scheduler = get_scheduler(
            config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_train_steps
        )
        schedule = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)  # training timesteps, unshifted
        generator = torch.Generator().manual_seed(config.seed * 7919 + parallel.rank)
        progress = read_json(files.progress, {}) or {}
        state = load_state(files)
        step = 0
        if state is not None:
            step = state["step"]
            with torch.no_grad():
                for name, parameter in parameters.items():
                    parameter.copy_(state["lora"][name])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["rng"][f"train{parallel.rank}"])
        # Metrics past the state (from a chunk that was killed) are dropped: those steps run again.
        progress = {
            "loss": [item for item in progress.get("loss", []) if item[0] <= step],
            "val_loss": [item for item in progress.get("val_loss", []) if item[0] <= step],
            "samples": progress.get("samples", []),
            "checkpoints": [name for name in progress.get("checkpoints", []) if int(name[5:11]) <= step],
            "warnings": sorted(set(progress.get("warnings", []) + ([note] if note else []))),
        }
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        train_indices = [index for index, row in enumerate(rows) if row["split"] == "train"]
        val_indices = [index for index, row in enumerate(rows) if row["split"] == "validation"]
        prompts = config.validation_prompts or [rows[(val_indices or train_indices)[0]]["caption"] or config.trigger_word or "a picture"]
        val_every = config.checkpoint_every or config.sample_every or max(1, config.max_train_steps // 10)
        precision = torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16
        autocast = torch.autocast("cuda", dtype=precision, enabled=device.type == "cuda" and config.mixed_precision != "no")
        started, stopped, done_here, saved_step = time.perf_counter(), False, 0, step

        def save_full_state(at: int, order: list[list[int]]) -> int:
            """The full state after step `at` (all ranks hold the same weights; rank 0 writes)."""
            states = parallel.gather([generator.get_state()]) if parallel.gather else [generator.get_state()]
            if parallel.is_main:
                rng = {f"train{rank}": state for rank, state in enumerate(states)}
                extra = {"data_order": order, "epoch_batches": len(order)}
                lora = {k: v.detach() for k, v in parameters.items()}
                save_state(files, at, lora, optimizer.state_dict(), scheduler.state_dict(), rng, extra)
                log_line(files, f"step {at}/{config.max_train_steps}: state saved (loss {progress['loss'][-1][1]:.4f})")
            return at

        # 3. The loop: one numbered step per optimisation step.
        while step < config.max_train_steps:
            if should_stop():
                stopped = True
                break
            if (max_steps is not None and done_here >= max_steps) or (
                max_seconds is not None and done_here and time.perf_counter() - started > max_seconds
            ):
                break
            # 3a. This rank's batch (one bucket), its latents drawn from the cached posteriors, noise and t.
            batch, order = batch_for_step(rows, train_indices, config, step, parallel)
            latents = torch.cat([cache.latents(index, generator=generator) for index in batch])
            noise = torch.randn(latents.shape, generator=generator).to(device)
            u = compute_density_for_timestep_sampling("none", batch_size=len(batch), generator=generator)
            indices = (u * schedule.config.num_train_timesteps).long()
            # 3b. Loss, backward, averaged gradients (data parallel), clip, step.
            with autocast:
                loss = flow_matching_loss(transformer, latents, noise, indices, schedule, cache.text(batch))
            loss.backward()
            if parallel.average is not None:
                for parameter in parameters.values():
                    parameter.grad = parallel.average(parameter.grad)
                loss = parallel.average(loss.detach())
            torch.nn.utils.clip_grad_norm_(list(parameters.values()), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, done_here = step + 1, done_here + 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"The loss became {value} at step {step}; lower the learning rate and start again.")
            progress["loss"].append([step, round(value, 6)])
            # 3c. At intervals: validation loss, overfitting check, samples, a kept LoRA.
            final = step == config.max_train_steps
            if parallel.is_main and val_indices and (step % val_every == 0 or final):
                transformer.eval()
                progress["val_loss"].append([step, round(validation_loss(transformer, cache, val_indices, schedule, config), 6)])
                transformer.train()
                warning = overfitting_warning(progress["loss"], progress["val_loss"])
                if warning and warning not in progress["warnings"]:
                    progress["warnings"].append(warning)
            if parallel.is_main and ((config.sample_every and step % config.sample_every == 0) or final):
                transformer.eval()
                devices.restore()
                progress["samples"] += save_samples(pipe, layers, config, prompts, files, step)
                devices.park()
                transformer.train()
            if config.checkpoint_every and step % config.checkpoint_every == 0 and not final:
                if parallel.is_main:
                    files.checkpoints.mkdir(exist_ok=True)
                    name = f"step_{step:06d}.safetensors"
                    save_trained_lora(files.checkpoints / name, parameters, config, rows, step=step)
                    progress["checkpoints"].append(name)
                # With each kept LoRA the full state too: a job killed mid-chunk resumes from here.
                saved_step = save_full_state(step, order)
            progress["step"] = step
            progress["seconds_per_step"] = (time.perf_counter() - started) / done_here
            if parallel.is_main:
                write_json(files.progress, progress)
        # 4. The full state (all ranks hold the same weights; rank 0 writes), and the LoRA when done.
        finished = step >= config.max_train_steps
        if done_here and saved_step != step:
            save_full_state(step, order)
        if parallel.is_main and finished:
            save_trained_lora(files.final, parameters, config, rows, step=step)
        spent = progress.get("seconds_per_step") if done_here else None
        return ChunkResult(step, config.max_train_steps, finished, stopped, spent, progress["warnings"])
    except torch.OutOfMemoryError:
        raise JobError(
            f"The GPU ran out of memory at training step {step + 1} of {config.max_train_steps}; the job stopped and "
            f"keeps {_kept(files)}. Resume it when the GPU is less busy, or start a new job with a lower resolution, "
            "train_batch_size or network_dim, or with gradient_checkpointing on."
        ) from None
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise JobError(
            f"The disk is full: training step {step} could not be saved; the job stopped and keeps {_kept(files)} "
            "(nothing half-written). Free disk space (delete old jobs, LoRAs or outputs), then resume the job."
        ) from None
    finally:
        # 5. Give the pipeline back: adapter deleted, checkpointing, modes and devices as they were.
        if adapter_name in getattr(transformer, "peft_config", {}):
            transformer.delete_adapters(adapter_name)
        if config.gradient_checkpointing and not was_checkpointing:
            transformer.disable_gradient_checkpointing()
        for module, training in modes.items():
            module.training = training
        devices.restore()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # what a failed step held goes back to generation


def _kept(files: JobFiles) -> str:
    """What a stopped job still has, for its message: the newest full state and kept LoRA (no paths)."""
    states = sorted(files.states.glob("step_*")) if files.states.exists() else []
    kept = sorted(files.checkpoints.glob("step_*.safetensors")) if files.checkpoints.exists() else []
    parts = [f"its saved state of step {int(states[-1].name[5:])}" if states else "no saved state yet (it restarts from step 0)"]
    if kept:
        parts.append(f"its checkpoints up to step {int(kept[-1].stem[5:])}")
    return " and ".join(parts)
