"""The trained LoRA as a file: diffusers layout, PEFT config and kohya-style training facts.

Keys are `transformer.<module>.lora_A.weight` / `lora_B.weight` (what
`FluxPipeline.save_lora_weights` writes), the header carries the adapter's `LoraConfig`
under `lora_adapter_metadata` (as `transformer_lora_adapter_metadata` stores it, so diffusers
uses our rank and alpha instead of guessing) and the training facts as `ss_*` keys, which
`/inspect_lora` and the Publish card read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lora_space.lora.export import save_tensors
from lora_space.train.config import TrainConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


def adapter_metadata(config: TrainConfig, target_modules: list[str]) -> dict[str, str]:
    """`LoraConfig.to_dict()` with the `transformer.` prefix, as diffusers' writer packs it."""
    from peft import LoraConfig

    lora_config = LoraConfig(r=config.network_dim, lora_alpha=config.network_alpha, target_modules=target_modules)
    values = {}
    for key, value in lora_config.to_dict().items():
        values[f"transformer.{key}"] = sorted(value) if isinstance(value, set) else value
    return {"lora_adapter_metadata": json.dumps(values, indent=2, sort_keys=True, default=str)}


def training_metadata(config: TrainConfig, rows: list[dict], *, step: int) -> dict[str, str]:
    """The kohya `ss_*` facts a reader expects, plus the trigger word."""
    images = sum(row["split"] == "train" for row in rows)
    facts = {
        "ss_network_module": "lora_space.train",
        "ss_network_dim": config.network_dim,
        "ss_network_alpha": config.network_alpha,
        "ss_learning_rate": config.learning_rate,
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": config.lr_warmup_steps,
        "ss_max_train_steps": config.max_train_steps,
        "ss_steps": step,
        "ss_num_train_images": images,
        "ss_batch_size_per_device": config.train_batch_size,
        "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_sd_model_name": config.model_name,
        "ss_base_model_version": "flux1",
        "ss_optimizer": config.optimizer_type,
        "ss_seed": config.seed,
        "ss_mixed_precision": config.mixed_precision,
        "ss_gradient_checkpointing": config.gradient_checkpointing,
        "ss_training_finished_at": int(time.time()),
    }
    metadata = {key: str(value) for key, value in facts.items()}
    if config.trigger_word:
        metadata["trigger_word"] = config.trigger_word
        metadata["ss_tag_frequency"] = json.dumps({"trigger": {config.trigger_word: images}})
    return metadata


def save_trained_lora(path: Path, parameters: dict[str, torch.Tensor], config: TrainConfig, rows: list[dict], *, step: int) -> Path:
    """Write the adapter's weights (in the run's precision) with its metadata, atomically."""
    from lora_space.train.steps import TARGET_MODULES

    dtype = DTYPES[config.mixed_precision]
    tensors = {name: value.detach().to("cpu", dtype) for name, value in parameters.items()}
    metadata = {"format": "pt"} | adapter_metadata(config, TARGET_MODULES) | training_metadata(config, rows, step=step)
    return save_tensors(path, tensors, metadata)
