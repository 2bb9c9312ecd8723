"""The training presets of `presets.json`: their values, what each sets in words, and the course's guidance per setting."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from lora_space.core.errors import TrainConfigError
from lora_space.train.config import merged

PRESETS_FILE = Path(__file__).with_name("presets.json")


@functools.cache
def load_presets() -> dict:
    """`presets.json`: `presets` (name -> description and values), `guidance` (key -> text), `default_preset`."""
    return json.loads(PRESETS_FILE.read_text(encoding="utf-8"))


def preset_values(name: str) -> dict:
    """The values of one preset (a copy).

    Raises:
        TrainConfigError: no preset of that name.
    """
    presets = load_presets()["presets"]
    if name not in presets:
        raise TrainConfigError(f"There is no preset {name!r}; choose one of {', '.join(presets)}.")
    return dict(presets[name]["values"])


def preset_description(name: str, *, is_tiny: bool, bnb_available: bool | None = None) -> str:
    """What a preset is for, what it sets (made from its values, so that the two never disagree),
    and what this machine changes of it (`TrainConfig.notes`, e.g. nf4 without a CUDA GPU).

    Raises:
        TrainConfigError: no preset of that name.
    """
    values = preset_values(name)
    config = merged(values, None, is_tiny=is_tiny, bnb_available=bnb_available)
    parts = []
    if "resolution" in values:
        parts.append(f"{values['resolution']} px")
    if "max_train_steps" in values:
        parts.append(f"{values['max_train_steps']} steps")
    if "network_dim" in values:
        alpha = f" (alpha {values['network_alpha']:g})" if "network_alpha" in values else ""
        parts.append(f"rank {values['network_dim']}{alpha}")
    if "train_batch_size" in values:
        parts.append(f"batch {values['train_batch_size']}")
    if "learning_rate" in values:
        parts.append(f"learning rate {values['learning_rate']:g}")
    if "optimizer_type" in values:
        parts.append(str(values["optimizer_type"]))
    if values.get("quantize_base", "none") != "none":
        parts.append(f"the base held in {values['quantize_base']}")
    if values.get("gradient_checkpointing"):
        parts.append("gradient checkpointing")
    if values.get("mixed_precision", "no") != "no":
        parts.append(str(values["mixed_precision"]))
    text = f"{load_presets()['presets'][name]['description']} Sets: {', '.join(parts)}."
    return text + (" On this machine: " + " ".join(config.notes) if config.notes else "")


def default_preset(is_tiny: bool) -> str:
    return load_presets()["default_preset"]["tiny" if is_tiny else "full"]


def guidance(key: str) -> str:
    return load_presets()["guidance"].get(key, "")
