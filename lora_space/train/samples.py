"""What a training sample carries: its recipe, as A1111 `parameters` text and LoRA Space's JSON.

The trainer renders each validation prompt at LoRA strength 0 and 1 with the same seed. Each
PNG says how it was made (`recipe.save_png`): the prompt, `<lora:NAME:0>` or `<lora:NAME:1>`
with the name the job's LoRA gets in the library, steps, guidance, seed, size and base model.
Published as widget images, they tell a reader of the card what made them, and A1111, Forge,
Civitai and the Generate tab's recipe loader read them back. The samples of an earlier step
were made with the LoRA as it was then; the name is that of the job's LoRA.
"""

from __future__ import annotations

import re

from ..recipe import LoraRef, Recipe
from .config import TrainConfig


def lora_name_for(trigger_word: str, job_id: str) -> str:
    """A library name for the job's LoRA: the trigger word (or "trained") and the id's start."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", trigger_word).strip("_-")[:40] or "trained"
    return f"{stem}_{job_id[:8]}"


def sample_recipe(config: TrainConfig, prompt: str, *, strength: float, job_id: str, steps: int, guidance: float) -> Recipe:
    """The recipe of one training sample.

    Args:
        config: the job's settings (seed, resolution, trigger word, base model).
        prompt: the validation prompt, as sent to the model.
        strength: 0 (the base model alone) or 1 (with the LoRA).
        job_id: the job's id; only its start goes into the LoRA's name.
        steps, guidance: the sampler settings the trainer used.
    """
    name = lora_name_for(config.trigger_word, job_id)
    words = (config.trigger_word,) if config.trigger_word else ()
    return Recipe(
        prompt=prompt,
        steps=steps,
        guidance=guidance,
        seed=config.seed,
        width=config.resolution,
        height=config.resolution,
        model=config.model_name,
        loras=(LoraRef(name, float(strength), source=name, trigger_words=words),),
    )

