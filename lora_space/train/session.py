"""A training job's working state (`Session`): set up from its folder or taken back from memory, then
advanced one piece at a time.

A piece is one training step, one image or caption encoded for the latent cache, one held-out
image's validation loss, one sample image, or a kept checkpoint. After a step, the work due at
that step (validation, samples, a checkpoint) is `Pending` until done; it is saved with the full
state, so a chunk may end between any two pieces and the next one, anywhere, goes on from there.

Between chunks in the same process the session may wait parked (`Parking.parked`, the engine):
its adapter stays attached and switched off, with its optimizer, schedule, RNG and cache, so a
chunk that ended for a generation resumes without reading its state back. It is taken back only
while its job's newest state on disk is the one it saved itself (the `session` mark).
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_density_for_timestep_sampling
from peft.tuners.tuners_utils import BaseTunerLayer

from lora_space.core.errors import TrainConfigError
from lora_space.train.cache import CacheBuilder, LiveEncoder
from lora_space.train.checkpoint import (
    JobFiles,
    load_state,
    log_line,
    read_json,
    save_state,
    saved_state_info,
    write_json,
)
from lora_space.train.config import TrainConfig, is_due
from lora_space.train.lora_file import save_trained_lora
from lora_space.train.steps import (
    MAX_GRAD_NORM,
    VALIDATION_SIGMAS,
    Devices,
    Parallel,
    attach_adapter,
    batch_for_step,
    check_rank,
    flow_matching_loss,
    make_optimizer,
    overfitting_warning,
    reactivate_adapter,
    sample_image,
    set_enabled,
    validation_image_loss,
)

RATE_WEIGHT = 0.1  # how much one step's time moves the smoothed time per step (the ETA's rate)


def smoothed_rate(previous: float | None, measured: float, steps: int) -> float:
    """The time per step the ETA uses: an exponential average over steps, so that one slow chunk
    (a sample drawn, a generation that went first) moves the ETA a little rather than all the way.

    Args:
        previous: the smoothed rate so far (None: this is the first measurement).
        measured: this chunk's seconds per step.
        steps: the steps this chunk made (each counts once, `RATE_WEIGHT`).
    """
    if previous is None or previous <= 0:
        return measured
    weight = 1 - (1 - RATE_WEIGHT) ** max(steps, 1)
    return previous + weight * (measured - previous)


class Parking(Protocol):
    """Where a session waits between chunks (the engine's `parked`)."""

    parked: object | None


@dataclass
class Pending:
    """The work due after `step` not done yet: held-out images to measure, samples to draw, a checkpoint."""

    step: int
    validation: list[int] = field(default_factory=list)  # held-out rows still to measure
    losses: list[float] = field(default_factory=list)  # the measured ones' losses, in order
    samples: list[list[int]] = field(default_factory=list)  # [prompt number, strength] still to draw
    checkpoint: bool = False

    def parts(self) -> set[str]:
        return {name for name, left in (("validation", self.validation), ("samples", self.samples), ("checkpoint", self.checkpoint)) if left}


class Session:
    """One job's adapter, optimizer, schedule, RNG, cache and progress while it trains (see the module docstring)."""

    def __init__(self, pipe: FluxPipeline, files: JobFiles, adapter_name: str, parallel: Parallel) -> None:
        # 1. The job: config, rows, and what this machine can run.
        self.pipe, self.files, self.adapter_name, self.parallel = pipe, files, adapter_name, parallel
        self.config = config = TrainConfig(**read_json(files.config))
        self.rows = rows = read_json(files.rows)
        transformer = pipe.transformer
        self.device = transformer.device
        if config.quantize_base != "none" and self.device.type != "cuda":
            raise TrainConfigError(f"quantize_base {config.quantize_base} needs a CUDA GPU; set it to none on this machine.")
        check_rank(transformer, config)
        self.devices = Devices(pipe)
        # 2. The latents and caption embeddings: built piece by piece (`next_piece`) until complete.
        self.builder = CacheBuilder(pipe, rows, files, config) if config.cache_latents else None
        self.cache = self.builder.cache(self.device) if self.builder and self.builder.complete else None
        if not config.cache_latents:  # encoded again at every step, the encoders stay on the device
            self.cache = LiveEncoder(pipe, rows, files, config)
        # 3. Our adapter, optimizer and schedule, then the last state if there is one.
        self.parameters = attach_adapter(transformer, config, adapter_name, config.seed)
        self.layers = [module for module in transformer.modules() if isinstance(module, BaseTunerLayer) and adapter_name in module.lora_A]
        self.optimizer, note = make_optimizer(list(self.parameters.values()), config, self.device)
        self.scheduler = get_scheduler(
            config.lr_scheduler, optimizer=self.optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_train_steps
        )
        self.schedule = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)  # training timesteps, unshifted
        self.generator = torch.Generator().manual_seed(config.seed * 7919 + parallel.rank)
        state = load_state(files)
        self.step, self.pending, self.mark = 0, None, secrets.token_hex(8)
        if state is not None:
            self.step, self.mark = state["step"], state.get("session") or self.mark
            self.pending = Pending(**state["pending"]) if state.get("pending") else None
            with torch.no_grad():
                for name, parameter in self.parameters.items():
                    parameter.copy_(state["lora"][name])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.generator.set_state(state["rng"][f"train{parallel.rank}"])
        self.progress = self._progress_to_state(read_json(files.progress, {}) or {}, note)
        self.train_indices = [index for index, row in enumerate(rows) if row["split"] == "train"]
        self.val_indices = [index for index, row in enumerate(rows) if row["split"] == "validation"]
        self.prompts = config.validation_prompts or [rows[(self.val_indices or self.train_indices)[0]]["caption"] or config.trigger_word or "a picture"]
        self.changed = False  # the state in memory differs from the one on disk
        self.resumed = "disk"

    # -- taking a session and giving the pipeline back ----------------------------------------

    @classmethod
    def open(cls, pipe: FluxPipeline, files: JobFiles, *, adapter_name: str, parallel: Parallel, parking: Parking | None) -> Session:
        """The job's parked session if it is still the job's newest state, else one set up from the folder."""
        parked = parking.parked if parking is not None else None
        if isinstance(parked, Session):
            parking.parked = None  # type: ignore[union-attr]
            if parked._is_current(pipe, files, adapter_name, parallel):
                parked.resumed = "memory"
                return parked
            parked.close()  # another job's, or an outdated one: its adapter goes
        return cls(pipe, files, adapter_name, parallel)

    def _is_current(self, pipe, files: JobFiles, adapter_name: str, parallel: Parallel) -> bool:
        if (self.pipe, self.files.root, self.adapter_name, self.parallel.world_size) != (pipe, files.root, adapter_name, parallel.world_size):
            return False
        info = saved_state_info(files)
        if info is None:
            return self.step == 0 and not self.changed
        return info.get("session") == self.mark and info["step"] == self.step and not self.changed

    def begin(self) -> None:
        """Take the pipeline for a chunk: our adapter on and trainable, train mode, checkpointing."""
        transformer = self.pipe.transformer
        self.was_checkpointing = transformer.is_gradient_checkpointing
        self.modes = {module: module.training for module in transformer.modules()}
        if self.resumed == "memory":  # the lend switched every adapter off: ours on again
            reactivate_adapter(transformer, self.layers, self.adapter_name, self.parameters)
        if self.config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        self.started = time.perf_counter()

    def end(self, *, keep: bool) -> None:
        """Give the pipeline back: checkpointing, modes and devices as they were; the adapter kept
        switched off (`keep`, to be parked) or deleted."""
        transformer = self.pipe.transformer
        if self.config.gradient_checkpointing and not self.was_checkpointing:
            transformer.disable_gradient_checkpointing()
        for module, training in self.modes.items():
            module.training = training
        if keep:
            set_enabled(self.layers, False)
        else:
            self.close()
        self.devices.restore()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # what a failed step held goes back to generation

    def close(self) -> None:
        """Delete the adapter (the optimizer and cache go with this object)."""
        transformer = self.pipe.transformer
        if self.adapter_name in getattr(transformer, "peft_config", {}):
            transformer.delete_adapters(self.adapter_name)

    # -- pieces ---------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.step >= self.config.max_train_steps and self.pending is None and self.cache is not None

    @property
    def next_is_step(self) -> bool:
        return self.cache is not None and self.pending is None and self.step < self.config.max_train_steps

    def next_piece(self) -> str:
        """Do the next piece of the job; returns its kind: cache, validation, sample, checkpoint or step."""
        if self.cache is None:
            self.devices.restore()
            self.builder.build_next()  # type: ignore[union-attr]
            if self.builder.complete:  # type: ignore[union-attr]
                self.cache = self.builder.cache(self.device)  # type: ignore[union-attr]
            return "cache"
        if self.pending is not None:
            return self._pending_piece(self.pending)
        self._step()
        return "step"

    def _encoders(self, needed: bool) -> None:
        """The VAE and text encoders on the device when a piece needs them; else off it, if the cache holds their work."""
        if needed:
            self.devices.restore()
        elif self.config.cache_latents:
            self.devices.park()

    def _step(self) -> None:
        """One optimisation step (numbered as in diffusers' recipe), then the work due at it becomes pending."""
        config, parallel, device = self.config, self.parallel, self.device
        transformer = self.pipe.transformer
        self._encoders(needed=False)
        # a. This rank's batch (one bucket), its latents drawn from the cached posteriors, noise and t.
        batch, _ = batch_for_step(self.rows, self.train_indices, config, self.step, parallel)
        latents = torch.cat([self.cache.latents(index, generator=self.generator) for index in batch])
        noise = torch.randn(latents.shape, generator=self.generator).to(device)
        u = compute_density_for_timestep_sampling("none", batch_size=len(batch), generator=self.generator)
        indices = (u * self.schedule.config.num_train_timesteps).long()
        # b. Loss, backward, averaged gradients (data parallel), clip, step.
        precision = torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16
        with torch.autocast("cuda", dtype=precision, enabled=device.type == "cuda" and config.mixed_precision != "no"):
            loss = flow_matching_loss(transformer, latents, noise, indices, self.schedule, self.cache.text(batch))
        loss.backward()
        if parallel.average is not None:
            for parameter in self.parameters.values():
                parameter.grad = parallel.average(parameter.grad)
            loss = parallel.average(loss.detach())
        torch.nn.utils.clip_grad_norm_(list(self.parameters.values()), MAX_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.changed = True
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"The loss became {value} at step {self.step}; lower the learning rate and start again.")
        # c. What is due at this step: validation loss, samples (rank 0), a kept LoRA with the full state.
        total = config.max_train_steps
        pending = Pending(self.step)
        if parallel.is_main and self.val_indices and is_due(self.step, config.validation_every, total):
            pending.validation = list(self.val_indices)
        if parallel.is_main and is_due(self.step, config.sample_every, total):
            pending.samples = [[number, strength] for number in range(len(self.prompts)) for strength in (0, 1)]
        pending.checkpoint = bool(config.checkpoint_every) and self.step % config.checkpoint_every == 0 and self.step != total
        self.pending = pending if pending.parts() else None
        self.progress["loss"].append([self.step, round(value, 6)])
        self.progress["step"] = self.step
        self._write_progress()

    def _pending_piece(self, pending: Pending) -> str:
        transformer = self.pipe.transformer
        self.changed = True
        if pending.validation:
            self._encoders(needed=False)
            transformer.eval()
            pending.losses.append(validation_image_loss(transformer, self.cache, pending.validation.pop(0), self.schedule, self.config))
            transformer.train()
            if not pending.validation:
                mean = sum(pending.losses) / (len(pending.losses) * len(VALIDATION_SIGMAS))
                self.progress["val_loss"].append([pending.step, round(mean, 6)])
                warning = overfitting_warning(self.progress["loss"], self.progress["val_loss"])
                if warning and warning not in self.progress["warnings"]:
                    self.progress["warnings"].append(warning)
            kind = "validation"
        elif pending.samples:
            number, strength = pending.samples.pop(0)
            self._encoders(needed=True)
            transformer.eval()
            name = sample_image(self.pipe, self.layers, self.config, self.prompts, number, strength, self.files, pending.step)
            transformer.train()
            if name not in self.progress["samples"]:
                self.progress["samples"].append(name)
            kind = "sample"
        else:  # the kept LoRA, then the full state with it: a job killed after this resumes from here
            if self.parallel.is_main:
                self.files.checkpoints.mkdir(exist_ok=True)
                name = f"step_{pending.step:06d}.safetensors"
                save_trained_lora(self.files.checkpoints / name, self.parameters, self.config, self.rows, step=pending.step)
                if name not in self.progress["checkpoints"]:
                    self.progress["checkpoints"].append(name)
            pending.checkpoint = False
            self.pending = None
            self.save()
            kind = "checkpoint"
        if not pending.parts():
            self.pending = None
        self._write_progress()
        return kind

    # -- saving -----------------------------------------------------------------------------------

    def save_if_changed(self) -> None:
        if self.changed:
            self.save()

    def save(self) -> None:
        """The full state after `step`, with the pending work (all ranks hold the same weights; rank 0 writes)."""
        parallel = self.parallel
        states = parallel.gather([self.generator.get_state()]) if parallel.gather else [self.generator.get_state()]
        if parallel.is_main:
            _, order = batch_for_step(self.rows, self.train_indices, self.config, max(self.step - 1, 0), parallel)
            extra = {
                "data_order": order, "epoch_batches": len(order), "session": self.mark,
                "pending": asdict(self.pending) if self.pending else None,
            }  # fmt: skip
            rng = {f"train{rank}": state for rank, state in enumerate(states)}
            lora = {name: value.detach() for name, value in self.parameters.items()}
            save_state(self.files, self.step, lora, self.optimizer.state_dict(), self.scheduler.state_dict(), rng, extra)
            last = f" (loss {self.progress['loss'][-1][1]:.4f})" if self.progress["loss"] else ""
            log_line(self.files, f"step {self.step}/{self.config.max_train_steps}: state saved{last}")
        self.changed = False

    def seconds_per_step(self, steps: int) -> float | None:
        """This chunk's time per step (pieces included, as the ETA needs); the progress keeps the
        rate smoothed over the job's chunks (`smoothed_rate`), which the ETA uses."""
        if not steps:
            return None
        per_step = (time.perf_counter() - self.started) / steps
        self.progress["seconds_per_step"] = smoothed_rate(self.progress.get("seconds_per_step"), per_step, steps)
        self._write_progress()
        return per_step

    def _write_progress(self) -> None:
        if self.parallel.is_main:
            write_json(self.files.progress, self.progress)

    def _progress_to_state(self, progress: dict, note: str | None) -> dict:
        """The progress as of the state loaded. Records of work past it (a chunk that was killed) are
        dropped, since that work runs again; the state's own step keeps those not pending in it."""
        step = self.step
        open_parts = self.pending.parts() if self.pending else set()
        undrawn = {f"step{step:06d}_prompt{number}_strength{strength}.png" for number, strength in (self.pending.samples if self.pending else [])}

        def kept(at: int, part: str) -> bool:
            return at < step or (at == step and part not in open_parts)

        return {
            "loss": [item for item in progress.get("loss", []) if item[0] <= step],
            "val_loss": [item for item in progress.get("val_loss", []) if kept(item[0], "validation")],
            "samples": [name for name in progress.get("samples", []) if int(name[4:10]) <= step and name not in undrawn],
            "checkpoints": [name for name in progress.get("checkpoints", []) if kept(int(name[5:11]), "checkpoint")],
            "warnings": sorted(set(progress.get("warnings", []) + ([note] if note else []))),
            "step": step,
            **({"seconds_per_step": progress["seconds_per_step"]} if "seconds_per_step" in progress else {}),
        }
