"""The LoRA trainer: flow matching on the FLUX transformer, one chunk at a time.

`run_chunk` trains a job on a pipeline it is lent (the engine's own, see `Engine.lend`, or
the CLI's) in pieces (a step, an image encoded, a validation image, a sample image), from the
job folder's last full state to a new one, and ends between pieces when its time is up, when
it is cancelled or when a generation waits. Every chunk writes its state back, so chunks can
run in different processes (ZeroGPU workers) and a job killed at any moment resumes from its
last state and ends with the same weights as an uninterrupted run. Within one process the
job's session (`session.Session`: adapter, optimizer, cache) may stay parked between chunks,
so that a chunk ended for a generation resumes without reading anything back.

The maths follows diffusers' FLUX DreamBooth LoRA recipe (`train_dreambooth_lora_flux.py`):
latents normalised with the VAE's shift and scale; t drawn uniformly from the scheduler's
training timesteps ("none" weighting); `x_t = (1 - sigma) x_0 + sigma * noise`; latents packed
2x2; the guidance embedding fed 3.5; the timestep divided by 1000; the target `noise - x_0`;
the loss the per-image mean squared error; gradients clipped to norm 1; LoRA with alpha over
rank on the attention and feed-forward Linear layers, A Gaussian and B zero.
"""

from __future__ import annotations

import errno
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from ..errors import JobError, TrainConfigError
from ..recipe import save_png
from .cache import Cache
from .checkpoint import SAMPLE_PROMPTS, JobFiles, write_json
from .config import TrainConfig
from .lora_file import save_trained_lora
from .samples import sample_recipe

if TYPE_CHECKING:
    from .session import Parking, Session

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
    """What one chunk did: where the job is, why the chunk ended, its pieces and their times.

    `yielded`: it ended because a generation waited; `pieces`: how many of each kind it did
    (`step`, `cache`, `validation`, `sample`, `checkpoint`); `resumed`: `memory` (the parked
    session) or `disk`; `timings`: seconds to open the session, do the pieces, and save.
    """

    step: int
    total_steps: int
    finished: bool
    stopped: bool
    seconds_per_step: float | None = None
    warnings: list[str] = field(default_factory=list)
    yielded: bool = False
    pieces: dict[str, int] = field(default_factory=dict)
    resumed: str = "disk"
    timings: dict[str, float] = field(default_factory=dict)


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
    path = files.samples / f"step{step:06d}_prompt{number}_strength{strength}.png"
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


def run_chunk(
    pipe: FluxPipeline,
    job_dir: Path,
    *,
    adapter_name: str,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    should_yield: Callable[[], bool] = lambda: False,
    parallel: Parallel | None = None,
    parking: Parking | None = None,
) -> ChunkResult:
    """Train the job in `job_dir` from its last state, piece by piece, until it is done or the chunk must end.

    A piece is one training step, one image or caption encoded for the cache, one held-out
    image's validation loss, one sample image, or a kept checkpoint. Before each piece (after the
    first) the chunk ends when `should_stop()` (cancel, shutdown: `stopped`), when `max_seconds`
    have passed, when `should_yield()` (a generation waits: `yielded`), or before a step when
    `max_steps` steps are done. It then saves the full state, with the pieces still due after
    the last step, so the next chunk goes on from there in this process or any other.

    The caller owns `pipe` for the call (`Engine.lend`); on return the pipeline is as it was
    (gradient checkpointing, modes, devices), and the adapter is deleted, or kept attached and
    switched off with the job's optimizer, schedule and cache in `parking.parked` (the engine),
    where the job's next chunk takes them back without reading its state from disk.

    Raises:
        TrainConfigError: the job's config cannot run here (a quantised base on a CPU).
        JobError: out of GPU memory or a full disk; the message says what the job keeps.
    """
    from .session import Session  # the session is made of this module's maths

    parallel = parallel or Parallel()
    files = JobFiles(Path(job_dir))
    started = time.perf_counter()
    session: Session | None = None
    keep = False
    try:
        # 1. The job's session: the parked one, or set up again from the job folder.
        session = Session.open(pipe, files, adapter_name=adapter_name, parallel=parallel, parking=parking)
        session.begin()
        timings = {"open": time.perf_counter() - started}
        # 2. Pieces, at least one, until the job is done or the chunk must end.
        counts: Counter[str] = Counter()
        stopped = yielded = False
        while not session.done:
            if should_stop():
                stopped = True
                break
            if counts:
                if max_seconds is not None and time.perf_counter() - started > max_seconds:
                    break
                if should_yield():
                    yielded = True
                    break
                if max_steps is not None and counts["step"] >= max_steps and session.next_is_step:
                    break
            counts[session.next_piece()] += 1
        # 3. The full state if anything changed, and the LoRA when done.
        saving = time.perf_counter()
        timings["pieces"] = saving - started - timings["open"]
        session.save_if_changed()
        if session.done and parallel.is_main:
            save_trained_lora(files.final, session.parameters, session.config, session.rows, step=session.step)
        timings["save"] = time.perf_counter() - saving
        keep = parking is not None and not session.done and not stopped
        return ChunkResult(
            session.step, session.config.max_train_steps, session.done, stopped, session.seconds_per_step(counts["step"]),
            session.progress["warnings"], yielded=yielded, pieces=dict(counts), resumed=session.resumed, timings=timings,
        )  # fmt: skip
    except torch.OutOfMemoryError:
        step = session.step if session else 0
        total = session.config.max_train_steps if session else 0
        raise JobError(
            f"The GPU ran out of memory at training step {step + 1} of {total}; the job stopped and "
            f"keeps {_kept(files)}. Resume it when the GPU is less busy, or start a new job with a lower resolution, "
            "train_batch_size or network_dim, or with gradient_checkpointing on."
        ) from None
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise JobError(
            f"The disk is full: training step {session.step if session else 0} could not be saved; the job stopped and keeps "
            f"{_kept(files)} (nothing half-written). Free disk space (delete old jobs, LoRAs or outputs), then resume the job."
        ) from None
    finally:
        # 4. Give the pipeline back: adapter deleted or parked, checkpointing, modes and devices as they were.
        if session is not None:
            session.end(keep=keep)
        if parking is not None:
            parking.parked = session if keep else None


def _kept(files: JobFiles) -> str:
    """What a stopped job still has, for its message: the newest full state and kept LoRA (no paths)."""
    states = sorted(files.states.glob("step_*")) if files.states.exists() else []
    kept = sorted(files.checkpoints.glob("step_*.safetensors")) if files.checkpoints.exists() else []
    parts = [f"its saved state of step {int(states[-1].name[5:])}" if states else "no saved state yet (it restarts from step 0)"]
    if kept:
        parts.append(f"its checkpoints up to step {int(kept[-1].stem[5:])}")
    return " and ".join(parts)

