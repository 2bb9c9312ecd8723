"""Write a `LoraSet` as a diffusers, kohya or ComfyUI file, every tensor kept bit for bit.

- diffusers: `transformer.<module>.lora_A.weight` / `lora_B.weight`, alphas in diffusers'
  `lora_adapter_metadata` header entry (as `save_lora_weights` writes it).
- kohya (A1111/Forge, sd-scripts): `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`,
  `.lora_up.weight`, `.alpha`.
- ComfyUI: the same with `diffusion_model.double_blocks.0.img_attn.qkv.` names.

The kohya and ComfyUI layouts fuse q, k, v (and the single blocks' MLP input) into one
module. Parts that share their A (as read from a dense kohya file) are written back dense.
Separately trained parts are written in kohya's split layout (sd-scripts' `split_qkv`): every
part gets the same number R of rank columns, A stacked, B on the diagonal, alpha = scale * n R
for n parts. A part the LoRA lacks (FLUX's single-block MLP input, which diffusers' recipe does
not train) or of a lower rank is padded with zeros to R. Every tool computes the same update
from that, and readers that split it part by part (diffusers' kohya converter finds the
diagonal when the fused rank is n R) recover each part at rank R: a rank-r q/k/v LoRA comes
back at rank r, not 3r. The true part ranks go into the `lora_space.split` metadata, so that
reading it back here is exact (a padded or missing part takes no rank).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import LoraFileError
from .formats import (
    ADAPTER_METADATA,
    SPLIT_METADATA,
    LoraModule,
    LoraSet,
    adapter_metadata,
)
from .keymap import COMFYUI_UNET, KOHYA_UNET, TEXT_ENCODER, Target, bfl_of

logger = logging.getLogger(__name__)

TARGETS = ("diffusers", "kohya", "comfyui")
HISTORY_METADATA = "lora_space.history"
KOHYA_TEXT_ENCODER = TEXT_ENCODER["kohya_prefixes"][0]


def _carried_metadata(lora: LoraSet) -> dict[str, str]:
    """The source's metadata (training facts, history) without what each layout rewrites."""
    return {key: value for key, value in lora.metadata.items() if key not in (ADAPTER_METADATA, SPLIT_METADATA, "format")}


def with_history(metadata: dict[str, str], step: dict) -> dict[str, str]:
    """Append one step (what was done to the file) to the `lora_space.history` metadata."""
    try:
        history = json.loads(metadata.get(HISTORY_METADATA, "[]"))
    except ValueError:
        history = []
    history = history if isinstance(history, list) else []
    return {**metadata, HISTORY_METADATA: json.dumps(history + [step])}


def diffusers_tensors(lora: LoraSet) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The diffusers layout: A and B as they are, alphas in the adapter metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in lora.modules.items():
        tensors[f"{name}.lora_A.weight"] = module.A
        tensors[f"{name}.lora_B.weight"] = module.B
    metadata = {**_carried_metadata(lora), "format": "pt"}
    metadata[ADAPTER_METADATA] = json.dumps(adapter_metadata(lora.modules), sort_keys=True)
    return tensors, metadata


def _shares_a(parts: dict[int, LoraModule], count: int) -> bool:
    """Whether all parts are present and use one A with one alpha (a dense fused module)."""
    if len(parts) != count:
        return False
    first = parts[0]
    return all(
        part.alpha == first.alpha and part.A.shape == first.A.shape and (part.A is first.A or torch.equal(part.A, first.A))
        for part in parts.values()
    )


def _fuse(target: Target, parts: dict[int, LoraModule], warnings: list[str]) -> tuple[LoraModule, list[int] | None]:
    """One BFL module from its diffusers parts; also the part ranks when written in the split layout."""
    # 1. One part, or parts sharing their A: no arithmetic at all.
    if not target.fused:
        module = parts[0]
        if target.swap:
            half = module.B.shape[0] // 2
            return LoraModule(module.A, torch.cat([module.B[half:], module.B[:half]]), module.alpha), None
        return module, None
    if _shares_a(parts, len(target.names)):
        first = parts[0]
        return LoraModule(first.A, torch.cat([parts[i].B for i in range(len(parts))]), first.alpha), None
    # 2. kohya's split layout: rows per part from the shares, R rank columns per part.
    present = sorted(parts)
    unit = parts[present[0]].out_features // target.shares[present[0]]
    outs = [unit * share for share in target.shares]
    ranks = [parts[i].rank if i in parts else 0 for i in range(len(outs))]
    width = max(ranks)
    dtype = parts[present[0]].B.dtype
    reference = parts[present[0]].scale
    if any(parts[i].scale != reference for i in present):
        warnings.append(f"{target.bfl}: its parts have different alpha/rank scales; they were folded into B (not bit-exact).")
    # 3. Each part's A in its R rows, its B on the diagonal; zeros elsewhere; alpha keeps the common scale.
    down = torch.zeros(width * len(outs), parts[present[0]].in_features, dtype=dtype)
    up = torch.zeros(sum(outs), width * len(outs), dtype=dtype)
    row = 0
    for index, (out, rank) in enumerate(zip(outs, ranks)):
        if index in parts:
            column = index * width
            ratio = parts[index].scale / reference
            B = parts[index].B.to(dtype)
            down[column : column + rank] = parts[index].A.to(dtype)
            up[row : row + out, column : column + rank] = B if ratio == 1 else (B.float() * ratio).to(dtype)
        row += out
    all_default = all(parts[i].alpha is None for i in present)
    return LoraModule(down, up, None if all_default else reference * width * len(outs)), ranks


def kohya_tensors(lora: LoraSet, *, comfyui: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """The kohya layout (or ComfyUI's, with `comfyui`), for A1111/Forge and ComfyUI.

    Returns:
        tensors, metadata and warnings (e.g. parts whose scales had to be folded).

    Raises:
        LoraFileError: a module has no name in that layout.
    """
    # 1. Group diffusers modules by the BFL module they belong to.
    groups: dict[str, tuple[Target, dict[int, LoraModule]]] = {}
    text_encoder: dict[str, LoraModule] = {}
    nameless = []
    for name, module in lora.modules.items():
        if name.startswith("text_encoder."):
            text_encoder[name.removeprefix("text_encoder.")] = module
            continue
        found = bfl_of(name)
        if found is None:
            nameless.append(name)
            continue
        target, index = found
        groups.setdefault(target.bfl, (target, {}))[1][index] = module
    if nameless:
        raise LoraFileError(
            f"{len(nameless)} modules have no {'ComfyUI' if comfyui else 'kohya'} name (e.g. {nameless[0]}); "
            "keep this LoRA in the diffusers layout."
        )
    # 2. Fuse and name them.
    tensors: dict[str, torch.Tensor] = {}
    splits: dict[str, list[int]] = {}
    warnings: list[str] = []
    named: list[tuple[str, LoraModule]] = []
    for bfl, (target, parts) in groups.items():
        fused, ranks = _fuse(target, parts, warnings)
        if ranks is not None:
            splits[bfl] = ranks
        named.append((COMFYUI_UNET + bfl if comfyui else KOHYA_UNET + bfl.replace(".", "_"), fused))
    for inner, module in text_encoder.items():
        named.append((TEXT_ENCODER["comfyui_prefix"] + inner if comfyui else KOHYA_TEXT_ENCODER + inner.replace(".", "_"), module))
    for prefix, module in named:
        tensors[f"{prefix}.lora_down.weight"] = module.A
        tensors[f"{prefix}.lora_up.weight"] = module.B
        if module.alpha is not None:
            tensors[f"{prefix}.alpha"] = torch.tensor(module.alpha, dtype=torch.float32)
    # 3. Metadata: the source's, plus the part ranks for an exact way back.
    metadata = _carried_metadata(lora)
    if splits:
        metadata[SPLIT_METADATA] = json.dumps(splits, sort_keys=True)
    return tensors, metadata, warnings


def lora_tensors(lora: LoraSet, target: str) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Tensors and metadata of `lora` in `target` layout (`diffusers`, `kohya`, `comfyui`)."""
    if target == "diffusers":
        return (*diffusers_tensors(lora), [])
    if target in ("kohya", "comfyui"):
        return kohya_tensors(lora, comfyui=target == "comfyui")
    raise LoraFileError(f"Unknown target layout {target!r}; use one of {', '.join(TARGETS)}.")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a `.safetensors` file atomically; tensors sharing memory are copied first."""
    path = Path(path)
    seen: set[int] = set()
    ready: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr()
        ready[name] = tensor.clone() if storage in seen else tensor.contiguous()
        seen.add(storage)
    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(ready, str(partial), metadata=metadata)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise
    return path


def save_lora(lora: LoraSet, path: str | Path, *, target: str = "diffusers", step: dict | None = None) -> list[str]:
    """Write `lora` to `path` in `target` layout, recording `step` in its history; returns warnings."""
    tensors, metadata, warnings = lora_tensors(lora, target)
    if step is not None:
        metadata = with_history(metadata, step)
    save_tensors(path, tensors, metadata)
    logger.info("wrote %s (%s layout, %d tensors)", path, target, len(tensors))
    return lora.warnings + warnings
