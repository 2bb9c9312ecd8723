"""Pre-train the drawing tiny model on random drawn scenes, with the trainer's flow-matching loss.

    python -m lora_space.train.pretrain_tiny --out lora_space/tiny/tiny_draw.safetensors --log benchmarks/results/tiny_pretrain.json

Every step draws a batch of random scenes (`scenes.random_scene`, a fixed seed), encodes the
pictures with the colour VAE and the captions (a third of them with made-up words before or
after, as trigger words come) with the pipeline's own `encode_prompt`, and
trains the transformer and both text encoders with `trainer.flow_matching_loss` (uniform
timesteps, target `noise - x_0`, guidance 3.5, as the LoRA trainer does), AdamW with warmup
and a cosine decay, gradients clipped to norm 1. The saved weights are an exponential moving
average of the trained ones. The same seed and thread count give the same weights (float
sums may differ with another thread count or CPU).

The T5 of the drawing model reads each word on its own (`tiny_draw`), so the padding tokens
FluxPipeline appends up to 512 are all alike, through the T5 and through every transformer
block (text positions all share the rotary position 0). Attention over N equal keys is
attention over one of them with log(N) added to its score, so pre-training keeps a single
padding token with that bias (`PaddedText`) and computes exactly what the 512 would, at a
fraction of the cost.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from lora_space.tiny.draw import (
    T5_MAX_LENGTH,
    WEIGHTS_FILE,
    build_drawing_pipeline,
    save_drawing_weights,
    trained_modules,
)
from lora_space.tiny.scenes import draw, random_scene, words
from lora_space.train.steps import MAX_GRAD_NORM, flow_matching_loss

OTHER_WORDS_BEFORE, OTHER_WORDS_AFTER = 0.25, 0.1  # shares of captions with unknown words before / after


@dataclass
class PretrainConfig:
    """Pre-training settings (the defaults made the shipped weights).

    Args:
        steps: optimisation steps in all.
        batch_size: scenes per step.
        learning_rate: AdamW's peak rate, reached after `warmup_steps`, then a cosine decay to 0.
        ema_decay: the saved weights are this moving average of the trained ones.
        seed: scenes, noise, timesteps and the initial weights follow from it.
        max_minutes: stop early after this long (the schedule still assumes `steps`).
        log_every: steps between lines of the loss log.
    """

    steps: int = 3200
    batch_size: int = 8
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.998
    seed: int = 0
    max_minutes: float | None = None
    log_every: int = 50


def with_other_words(caption: str, rng: random.Random) -> str:
    """The caption, sometimes with a made-up word before it or words after it ("zqvd_kly, a red
    circle ...", as a LoRA's trigger word comes), so that words the model does not know change little."""

    def made_up() -> str:
        return "_".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(rng.randint(1, 2)))

    roll = rng.random()
    if roll < OTHER_WORDS_BEFORE:
        return f"{made_up()}, {caption}"
    if roll < OTHER_WORDS_BEFORE + OTHER_WORDS_AFTER:
        return f"{caption}, {' '.join(made_up() for _ in range(rng.randint(1, 2)))}"
    return caption


class PaddedText:
    """The transformer, called with one padding token standing for all of a caption's padding.

    `flow_matching_loss` calls it as it calls the transformer; each call adds an attention
    bias of log(padding tokens it stands for) on the kept padding positions (`joint_attention_kwargs`).
    """

    def __init__(self, transformer, bias: torch.Tensor) -> None:
        self.transformer, self.bias = transformer, bias

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def config(self):
        return self.transformer.config

    def __call__(self, **inputs):
        images = inputs["hidden_states"].shape[1]
        scores = torch.cat([self.bias, self.bias.new_zeros(self.bias.shape[0], images)], dim=1)
        return self.transformer(**inputs, joint_attention_kwargs={"attention_mask": scores[:, None, None, :]})


def encode_captions(pipe: FluxPipeline, captions: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The captions' text inputs as `flow_matching_loss` takes them, cut to one padding token,
    and the attention bias that makes the cut sequence act as the full 512 (`PaddedText`)."""
    lengths = [len(ids) for ids in pipe.tokenizer_2(captions).input_ids]  # words + </s>
    kept = min(max(lengths) + 1, T5_MAX_LENGTH)
    embeds, pooled, ids = pipe.encode_prompt(prompt=captions, prompt_2=None, device=pipe.transformer.device, max_sequence_length=kept)
    bias = torch.zeros(len(captions), kept)
    for row, length in enumerate(lengths):
        if length < kept:
            bias[row, length:] = math.log((T5_MAX_LENGTH - length) / (kept - length))
    return {"embeds": embeds, "pooled": pooled, "ids": ids}, bias


def encode_pictures(pipe: FluxPipeline, pictures: list) -> torch.Tensor:
    """Pictures (PIL) as normalised latents, as the LoRA trainer's cache makes them."""
    pixels = torch.stack([torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1) for picture in pictures])
    vae = pipe.vae
    with torch.no_grad():
        mean = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
    return (mean.float() - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def trainable_parameters(pipe: FluxPipeline) -> list[torch.nn.Parameter]:
    """The transformer's and text encoders' weights, but not the T5's zero attention projections."""
    found = []
    for module in trained_modules(pipe).values():
        for name, parameter in module.named_parameters():
            frozen = name.endswith("SelfAttention.o.weight")
            parameter.requires_grad_(not frozen)
            if not frozen:
                found.append(parameter)
    return found


def pretrain(config: PretrainConfig, out: Path, log: Path | None = None) -> dict:
    """Pre-train from random weights and write the EMA weights to `out`; returns the loss log."""
    torch.manual_seed(config.seed)
    pipe = build_drawing_pipeline(weights=None)
    parameters = trainable_parameters(pipe)
    ema = copy.deepcopy(trained_modules(pipe))
    live_weights = [parameter for module in trained_modules(pipe).values() for parameter in module.parameters()]
    ema_weights = [parameter.requires_grad_(False) for module in ema.values() for parameter in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay, foreach=True)
    schedule_lr = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps)
    schedule = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)  # training timesteps, as the trainer's
    rng, generator = random.Random(config.seed), torch.Generator().manual_seed(config.seed)
    for module in trained_modules(pipe).values():
        module.train()
    history = {"config": asdict(config), "threads": torch.get_num_threads(), "steps": [], "loss": [], "seconds": [], "load": []}
    started, window = time.perf_counter(), []
    for step in range(1, config.steps + 1):
        # 1. A batch of random scenes: pictures as latents, captions as text inputs (with gradients).
        scenes = [random_scene(rng) for _ in range(config.batch_size)]
        latents = encode_pictures(pipe, [draw(scene) for scene in scenes])
        text, bias = encode_captions(pipe, [with_other_words(scene.caption, rng) for scene in scenes])
        # 2. Noise and timesteps as the LoRA trainer draws them; the trainer's loss.
        noise = torch.randn(latents.shape, generator=generator)
        u = compute_density_for_timestep_sampling("none", batch_size=len(scenes), generator=generator)
        indices = (u * schedule.config.num_train_timesteps).long()
        loss = flow_matching_loss(PaddedText(pipe.transformer, bias), latents, noise, indices, schedule, text)
        # 3. Step, then the moving average of the weights.
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        schedule_lr.step()
        optimizer.zero_grad(set_to_none=True)
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_weights, live_weights, 1 - decay)
        # 4. The loss log, and an early stop at the time limit.
        window.append(float(loss.detach()))
        elapsed = time.perf_counter() - started
        if step % config.log_every == 0 or step == config.steps:
            history["steps"].append(step)
            history["loss"].append(round(sum(window) / len(window), 5))
            history["seconds"].append(round(elapsed, 1))
            history["load"].append(round(os.getloadavg()[0], 2))  # the machine is shared: how busy it was
            window = []
            print(f"step {step}/{config.steps}  loss {history['loss'][-1]:.4f}  {elapsed / 60:.1f} min", flush=True)
            if log is not None:
                log.write_text(json.dumps(history, indent=1) + "\n")
        if config.max_minutes is not None and elapsed > config.max_minutes * 60:
            break
    for name, module in trained_modules(pipe).items():
        module.load_state_dict(ema[name].state_dict())
    history["minutes"] = round((time.perf_counter() - started) / 60, 2)
    loads = history["load"] or [os.getloadavg()[0]]
    facts = {
        "config": asdict(config), "steps_done": step, "minutes": history["minutes"], "threads": history["threads"],
        "load": f"1-minute load average {min(loads):.1f} to {max(loads):.1f}, mean {sum(loads) / len(loads):.1f}, on {os.cpu_count()} CPUs",
        "log": {"steps": history["steps"], "loss": history["loss"]},
    }  # fmt: skip
    extra = {"pretraining": json.dumps(facts)}
    save_drawing_weights(pipe, out, vocabulary=words(), extra=extra)
    if log is not None:
        log.write_text(json.dumps(history, indent=1) + "\n")
    return history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pre-train the drawing tiny FLUX model on drawn scenes.")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE, help="where to write the weights (safetensors)")
    parser.add_argument("--log", type=Path, default=None, help="where to write the loss log (JSON)")
    defaults = PretrainConfig()
    for name in ("steps", "batch_size", "learning_rate", "warmup_steps", "ema_decay", "seed", "max_minutes", "log_every"):
        value = getattr(defaults, name)
        kind = float if name in ("learning_rate", "ema_decay", "max_minutes") else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    args = parser.parse_args(argv)
    config = PretrainConfig(**{name: getattr(args, name) for name in asdict(defaults) if hasattr(args, name)})
    history = pretrain(config, args.out, args.log)
    print(f"wrote {args.out} after {history['steps'][-1]} steps in {history['minutes']} min")


if __name__ == "__main__":
    main()
