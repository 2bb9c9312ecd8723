"""Random LoRAs of known rank and alpha, for tests and benchmarks.

`random_lora(base.modules, rank=4, alpha=8)` gives a `LoraSet` on the chosen modules of a
base (`shapes.tiny_shapes()`, `shapes.known_bases()`), which `export.save_lora` writes
in any layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from lora_space.lora.formats import LoraModule, LoraSet


def random_lora(
    shapes: Mapping[str, tuple[int, int]],
    *,
    rank: int,
    alpha: float | None = None,
    modules: Iterable[str] | None = None,
    seed: int = 0,
    scale: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> LoraSet:
    """A LoRA with random A and B (both non-zero, so it changes the output).

    Args:
        shapes: module name (with `transformer.` / `text_encoder.`) -> (out, in).
        rank: every module's rank.
        alpha: every module's alpha; None stores none (scale 1).
        modules: the modules to train (default: every transformer module in `shapes`).
        seed: the generator seed; the same seed gives the same tensors.
        scale: the standard deviation of the entries.
        dtype: the tensors' dtype.
    """
    names = list(modules) if modules is not None else [name for name in shapes if name.startswith("transformer.")]
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name in names:
        out_features, in_features = shapes[name]
        A = (torch.randn(rank, in_features, generator=generator) * scale).to(dtype)
        B = (torch.randn(out_features, rank, generator=generator) * scale).to(dtype)
        result[name] = LoraModule(A, B, alpha)
    return LoraSet(modules=result, format="diffusers")
