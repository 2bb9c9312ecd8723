"""Build real LoRA files for the tiny model in tests (diffusers format unless told otherwise)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from lora_space.tiny.model import build_tiny_pipeline

ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v")


def tiny_linear_shapes() -> dict[str, tuple[int, int]]:
    """`module path -> (out, in)` of every Linear in the tiny transformer."""
    transformer = build_tiny_pipeline().transformer
    return {
        name: (module.out_features, module.in_features)
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def lora_tensors(seed: int, *, rank: int = 4, scale: float = 0.5, blocks: tuple[str, ...] = ("transformer_blocks.0", "single_transformer_blocks.0"), suffixes: tuple[str, ...] = ATTENTION) -> dict[str, torch.Tensor]:
    """Random diffusers-format LoRA tensors (`transformer.<module>.lora_A/B.weight`) on the named modules."""
    shapes = tiny_linear_shapes()
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for block in blocks:
        for suffix in suffixes:
            module = f"{block}.{suffix}"
            out_features, in_features = shapes[module]
            tensors[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * scale
            tensors[f"transformer.{module}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * scale
    return tensors


def write_lora(path: Path, seed: int, *, metadata: dict[str, str] | None = None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_tensors(seed, **options), str(path), metadata=metadata)
    return path
