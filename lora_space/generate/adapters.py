"""Where a LoRA's modules land on the pipeline: the base module at each path, and the part of a
state dict whose modules exist there with matching shapes (diffusers would silently skip unknown
keys, and widen base weights for larger ones)."""

from __future__ import annotations

import torch
from diffusers import FluxPipeline

LORA_COMPONENTS = ("transformer", "text_encoder")


def pipeline_module(pipe: FluxPipeline, module_path: str) -> torch.nn.Module | None:
    """The pipeline's module at a diffusers LoRA module path (`transformer.x.y`), or None."""
    component, _, inner = module_path.partition(".")
    model = getattr(pipe, component, None) if component in LORA_COMPONENTS else None
    if model is None:
        return None
    if not hasattr(model, "text_model"):  # transformers 5's CLIPTextModel has no `text_model`
        inner = inner.removeprefix("text_model.")
    try:
        return model.get_submodule(inner)
    except AttributeError:
        return None

def matching_modules(pipe: FluxPipeline, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, int]:
    """The part of `state_dict` whose modules exist with matching shapes; (kept, matched, total)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        module_path, _, part = key.rpartition(".lora_")
        modules.setdefault(module_path, {})[part] = tensor
    kept: dict[str, torch.Tensor] = {}
    for module_path, parts in modules.items():
        base = pipeline_module(pipe, module_path)
        base = getattr(base, "base_layer", base)  # once an adapter is attached, peft wraps the Linear
        down, up = parts.get("A.weight"), parts.get("B.weight")
        if (
            isinstance(base, torch.nn.Linear)
            and down is not None
            and up is not None
            and down.shape[1] == base.in_features
            and up.shape[0] == base.out_features
            and up.shape[1] == down.shape[0]
        ):
            kept.update({f"{module_path}.lora_{part}": tensor for part, tensor in parts.items()})
    matched = len({key.rpartition(".lora_")[0] for key in kept})
    return kept, matched, len(modules)
