"""Base model shapes without weights, coverage, and which base a LoRA was made for.

A base model's module shapes come from its configs alone: the transformer (and CLIP text
encoder) are built on PyTorch's meta device, which allocates nothing. Known bases are in
`base_models.json`; `tiny` uses the configs in `lora_space.tiny.model`.

Coverage is the share of a LoRA's modules that land on a base module of the same shape:
the LoRA's update for a Linear(in, out) is B @ A with A (rank, in) and B (out, rank).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from lora_space.core.errors import LoraFileError
from lora_space.core.tiny_configs import (
    DRAWING_CLIP,
    DRAWING_TRANSFORMER,
    RANDOM_CLIP,
    RANDOM_TRANSFORMER,
)
from lora_space.lora.formats import LoraSet
from lora_space.lora.keymap import module_kind

logger = logging.getLogger(__name__)

BASES = json.loads(Path(__file__).with_name("base_models.json").read_text())
WIDE_INPUTS = {"ff.net.2", "ff_context.net.2", "proj_out"}  # modules whose input is not the hidden size


@dataclass(frozen=True)
class BaseShapes:
    """A base model's LoRA-able modules: diffusers name (with component) -> (out, in)."""

    name: str
    hidden_size: int
    modules: dict[str, tuple[int, int]] = field(repr=False)
    note: str = ""


@dataclass(frozen=True)
class Coverage:
    """How a LoRA's modules land on a base: matched, on a module of another shape, or nowhere."""

    share: float
    matched: int
    total: int
    wrong_shape: list[str]
    missing: list[str]


@lru_cache(maxsize=8)
def _shapes(transformer_json: str, text_encoder_json: str) -> dict[str, tuple[int, int]]:
    """Build the models on the meta device (no memory) and read every Linear's shape."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    modules: dict[str, tuple[int, int]] = {}
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(json.loads(transformer_json))
        text_config = json.loads(text_encoder_json)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)) if text_config else None
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear):
            modules[f"transformer.{name}"] = (module.out_features, module.in_features)
    for name, module in text_encoder.named_modules() if text_encoder is not None else ():
        if isinstance(module, torch.nn.Linear):
            inner = name if name.startswith("text_model.") else f"text_model.{name}"  # transformers 5 drops it
            modules[f"text_encoder.{inner}"] = (module.out_features, module.in_features)
    return modules


def shapes_from_configs(name: str, transformer: dict, text_encoder: dict | None = None, *, note: str = "") -> BaseShapes:
    """A base's shapes from its transformer (and CLIP) config dicts, as in `config.json`."""
    config = {key: value for key, value in transformer.items() if not key.startswith("_")}
    text = {key: value for key, value in (text_encoder or {}).items() if not key.startswith("_")}
    modules = _shapes(json.dumps(config, sort_keys=True), json.dumps(text, sort_keys=True))
    hidden = int(config.get("num_attention_heads", 24)) * int(config.get("attention_head_dim", 128))
    return BaseShapes(name=name, hidden_size=hidden, modules=modules, note=note)


def tiny_shapes() -> BaseShapes:
    """The offline random tiny FLUX model (`LORA_SPACE_BASE_MODEL=tiny-random`), for which tests build LoRAs."""
    return shapes_from_configs("tiny-random (LoRA Space's test model)", dict(RANDOM_TRANSFORMER), dict(RANDOM_CLIP))


def drawing_shapes() -> BaseShapes:
    """The offline drawing tiny FLUX model (`LORA_SPACE_BASE_MODEL=tiny`)."""
    return shapes_from_configs("tiny (LoRA Space's drawing model)", dict(DRAWING_TRANSFORMER), dict(DRAWING_CLIP))


def known_bases() -> list[BaseShapes]:
    """Every FLUX base LoRA Space can recognise: FLUX.1-dev, FLUX.1-schnell, the two tiny models."""
    flux = [shapes_from_configs(entry["name"], entry["transformer"], entry["text_encoder"]) for entry in BASES["flux"]]
    return flux + [drawing_shapes(), tiny_shapes()]


def known_base(hub_id: str) -> BaseShapes | None:
    """The shapes of a base listed in `base_models.json`, by its Hub id; None for another id."""
    for entry in BASES["flux"]:
        if hub_id in entry["hub_ids"]:
            return shapes_from_configs(entry["name"], entry["transformer"], entry["text_encoder"])
    return None


def folder_configs(folder: Path) -> tuple[dict, dict | None]:
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    text_file = folder / "text_encoder" / "config.json"
    return transformer, json.loads(text_file.read_text()) if text_file.is_file() else None


def coverage(lora: LoraSet, base: BaseShapes) -> Coverage:
    """The share of the LoRA's modules that land on a base module of matching shape (0..1).

    Modules the key table could not place (`lora.unplaced`) count as landing nowhere.
    """
    matched, wrong, missing = 0, [], list(lora.unplaced)
    for name, module in lora.modules.items():
        shape = base.modules.get(name)
        if shape is None:
            missing.append(name)
        elif shape == (module.out_features, module.in_features):
            matched += 1
        else:
            wrong.append(name)
    total = len(lora.modules) + len(lora.unplaced)
    return Coverage(share=matched / total if total else 0.0, matched=matched, total=total, wrong_shape=wrong, missing=missing)


def misfits(lora: LoraSet, base: BaseShapes) -> list[str]:
    """The LoRA's modules with no module of that name and shape in `base`; empty when it fits whole."""
    cover = coverage(lora, base)
    return cover.wrong_shape + [name for name in cover.missing if name in lora.modules]


def no_module_matched(name: str, total: int) -> LoraFileError:
    """The refusal of a LoRA none of whose `total` modules lands on the base model (Generate and Bake)."""
    return LoraFileError(
        f"LoRA {name!r} matches no module of the base model ({total} modules, none of the right "
        "name and shape), so it would do nothing; check that it was made for this FLUX.1 model "
        "(inspect it in LoRA tools)."
    )


def lora_hidden_size(lora: LoraSet) -> int | None:
    """The transformer width a LoRA was trained for, read from its block modules' input size."""
    widths = Counter(
        module.in_features
        for name, module in lora.modules.items()
        if re.match(r"transformer\.(single_)?transformer_blocks\.", name) and module_kind(name) not in WIDE_INPUTS
    )
    return widths.most_common(1)[0][0] if widths else None


def _unet_family(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """SDXL / SD 2.x / SD 1.5 from key names and the cross-attention width of `attn2.to_k`."""
    keys = list(shapes)
    if not any(pattern in key for key in keys for pattern in BASES["unet"]["key_patterns"]):
        return None
    families = BASES["unet"]["families"]
    for family in families:
        if any(key.startswith(marker) for key in keys for marker in family["markers"]):
            return family["name"]
    widths = {shape[1] for key, shape in shapes.items() if re.search(r"attn2[._]to_k", key) and len(shape) >= 2}
    for family in families:
        if family["cross_attention_dim"] in widths:
            return family["name"]
    return "Stable Diffusion (UNet)"


def _metadata_hint(metadata: dict[str, str], card_base: str) -> str | None:
    """A base named in the file's own metadata (modelspec, kohya `ss_*`) or its model card."""
    text = " ".join(
        [metadata.get(key, "") for key in ("modelspec.architecture", "ss_base_model_version", "ss_sd_model_name")]
        + [card_base]
    ).lower()
    for hint, name in BASES["metadata_hints"].items():
        if hint in text:
            return name
    return None


def guess_base(lora: LoraSet, shapes: dict[str, tuple[int, ...]], *, card_base: str = "") -> tuple[str, int | None]:
    """Which known base a LoRA was made for, from its keys and shapes, and its hidden size.

    Args:
        lora: the LoRA as read (`formats.read_lora`), possibly from a header only.
        shapes: every tensor name -> shape, as stored in the file.
        card_base: the model card's `base_model`, when there is a card.

    Returns:
        a readable name ("FLUX.1-dev", "FLUX.1-dev or FLUX.1-schnell", "SDXL", ... or "unknown"),
        and the transformer width the LoRA was trained for when it is a FLUX-style LoRA.
    """
    # 1. UNet families are told by their key names.
    family = _unet_family(shapes)
    if family is not None:
        return family, None
    hidden = lora_hidden_size(lora)
    if not lora.modules:
        return "unknown", hidden
    # 2. FLUX bases: the best coverage wins; dev and schnell differ only in the guidance embedder.
    scored = [(coverage(lora, base).share, base.name) for base in known_bases()]
    best = max(share for share, _ in scored)
    names = [name for share, name in scored if share == best and share > 0]
    hint = _metadata_hint(lora.metadata, card_base)
    if not names:
        return (f"a FLUX-style model with hidden size {hidden}" if hidden else "unknown"), hidden
    if hint in names:
        return hint, hidden
    return " or ".join(names), hidden
