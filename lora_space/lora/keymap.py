"""Where each key of a LoRA file lands among diffusers' FLUX modules, for every layout.

A LoRA file stores, per trained module, a down matrix A, an up matrix B and sometimes
an alpha. The layouts differ only in how they name that module:

- diffusers: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`
- raw PEFT: `base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight`
- kohya / sd-scripts: `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` + `.alpha`
- ComfyUI: `diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight`
- XLabs: `double_blocks.0.processor.qkv_lora1.down.weight`

The original (BFL) layout fuses q, k and v (and, in single blocks, the MLP input) into
one module; `flux_keys.json` lists each fused module's parts and their share of the
output rows. This module only reads names; `formats` moves the tensors.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

KEYS = json.loads(Path(__file__).with_name("flux_keys.json").read_text())

# Longer suffixes first: ".lora.down.weight" also ends with ".down.weight".
LORA_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.weight", "A"),
    (".lora_B.weight", "B"),
    (".lora_down.weight", "A"),
    (".lora_up.weight", "B"),
    (".lora.down.weight", "A"),
    (".lora.up.weight", "B"),
    (".down.weight", "A"),
    (".up.weight", "B"),
    (".alpha", "alpha"),
)
FORMATS = ("diffusers", "peft", "kohya", "comfyui", "xlabs", "unknown")
PEFT_PREFIX = "base_model.model."
KOHYA_UNET = "lora_unet_"
COMFYUI_UNET = "diffusion_model."
TRANSFORMER_ROOTS = tuple(KEYS["transformer_roots"])
TEXT_ENCODER = KEYS["text_encoder"]
BLOCKS: dict[str, str] = KEYS["blocks"]
SWAPPED = set(KEYS["swap_scale_shift"])


@dataclass(frozen=True)
class Target:
    """Where one file module lands: diffusers module names and each one's share of B's rows.

    `bfl` names the module in the original layout (empty for diffusers-only names);
    `swap` marks FLUX's final modulation, whose two halves are stored in the other order.
    """

    names: tuple[str, ...]
    shares: tuple[int, ...]
    bfl: str = ""
    swap: bool = False

    @property
    def fused(self) -> bool:
        return len(self.names) > 1


def split_key(key: str) -> tuple[str, str] | None:
    """`(module, role)` for a LoRA key, role being `A`, `B` or `alpha`; None for other keys."""
    for suffix, role in LORA_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def key_style(key: str) -> str | None:
    """The layout one key is written in, or None when it is not a LoRA key at all."""
    if split_key(key) is None:
        return None
    if ".processor." in key:
        return "xlabs"
    if key.startswith(("lora_unet_", "lora_te", "lora_transformer_")):
        return "kohya"
    if key.startswith((COMFYUI_UNET, "text_encoders.")):
        return "comfyui"
    if key.startswith(PEFT_PREFIX):
        return "peft"
    if key.endswith((".lora_A.weight", ".lora_B.weight", ".lora.down.weight", ".lora.up.weight", ".alpha")):
        return "diffusers"
    return None


def detect_format(keys: list[str] | set[str]) -> str:
    """The layout most LoRA keys are written in: one of `FORMATS`; `unknown` rather than a guess."""
    styles = Counter(style for style in map(key_style, keys) if style is not None)
    return styles.most_common(1)[0][0] if styles else "unknown"


def _bfl_table(table: dict, kind: str, index: str | None, name: str) -> Target | None:
    """Look `name` up in one part (`double_blocks`, `single_blocks`, `global`) of a BFL-style table."""
    parts = table.get(kind, {}).get(name)
    if parts is None:
        return None
    bfl = f"{kind}.{index}.{name}" if index is not None else name
    prefix = f"transformer.{BLOCKS[kind]}.{index}." if index is not None else "transformer."
    return Target(
        names=tuple(prefix + part for part, _ in parts),
        shares=tuple(share for _, share in parts),
        bfl=bfl,
        swap=bfl in SWAPPED,
    )


def _from_bfl(name: str, *, separator: str, table: dict) -> Target | None:
    """Map a BFL module name written with `separator` (`.` or `_`) onto diffusers modules."""
    sep = re.escape(separator)
    match = re.fullmatch(rf"(double_blocks|single_blocks){sep}(\d+){sep}(.+)", name)
    if match:
        kind, index, rest = match.groups()
        lookup = {key.replace(".", separator): key for key in table.get(kind, {})}
        return _bfl_table(table, kind, index, lookup[rest]) if rest in lookup else None
    lookup = {key.replace(".", separator): key for key in table.get("global", {})}
    return _bfl_table(table, "global", None, lookup[name]) if name in lookup else None


def _text_encoder(name: str, *, separator: str) -> Target | None:
    """Map a CLIP text-encoder module (`text_model.encoder.layers.0.self_attn.q_proj`)."""
    sep = re.escape(separator)
    layers = re.escape(TEXT_ENCODER["layers"].replace(".", separator))
    match = re.fullmatch(rf"{layers}{sep}(\d+){sep}(.+)", name)
    if not match:
        return None
    lookup = {module.replace(".", separator): module for module in TEXT_ENCODER["modules"]}
    module = lookup.get(match.group(2))
    if module is None:
        return None
    return Target(names=(f"text_encoder.{TEXT_ENCODER['layers']}.{match.group(1)}.{module}",), shares=(1,))


def _diffusers(name: str) -> Target | None:
    """A diffusers module name, with its component prefix added where it was left out."""
    root = name.split(".", 1)[0]
    if name.startswith("transformer.") and name.split(".", 2)[1] in TRANSFORMER_ROOTS:
        return Target(names=(name,), shares=(1,))
    if name.startswith("text_encoder."):
        return _text_encoder(name.removeprefix("text_encoder."), separator=".")
    if root in TRANSFORMER_ROOTS:
        return Target(names=(f"transformer.{name}",), shares=(1,))
    return None


def target_of(module: str, style: str) -> Target | None:
    """Where a file module (a key without its A/B/alpha suffix) lands; None when nowhere."""
    if style == "diffusers":
        return _diffusers(module)
    if style == "peft":
        inner = module.removeprefix(PEFT_PREFIX)
        return _from_bfl(inner, separator=".", table=KEYS["bfl"]) or _diffusers(inner)
    if style == "kohya":
        if module.startswith(KOHYA_UNET):
            return _from_bfl(module.removeprefix(KOHYA_UNET), separator="_", table=KEYS["bfl"])
        for prefix in TEXT_ENCODER["kohya_prefixes"]:
            if module.startswith(prefix):
                return _text_encoder(module.removeprefix(prefix), separator="_")
        return None
    if style == "comfyui":
        if module.startswith(TEXT_ENCODER["comfyui_prefix"]):
            return _text_encoder(module.removeprefix(TEXT_ENCODER["comfyui_prefix"]), separator=".")
        return _from_bfl(module.removeprefix(COMFYUI_UNET), separator=".", table=KEYS["bfl"])
    if style == "xlabs":
        return _from_bfl(module.removeprefix(COMFYUI_UNET), separator=".", table=KEYS["xlabs"])
    return None


def unsupported_part(module: str) -> str | None:
    """A readable name for a part diffusers' FLUX loader cannot take (e.g. the T5 encoder)."""
    for prefix, label in KEYS["unsupported_parts"].items():
        if module.startswith(prefix):
            return label
    return None


def _reverse_table() -> dict[str, tuple[str, int]]:
    """diffusers name template -> (BFL name template, part index), `{i}` standing for the block."""
    reverse: dict[str, tuple[str, int]] = {}
    for kind, table in KEYS["bfl"].items():
        for bfl, parts in table.items():
            for index, (part, _) in enumerate(parts):
                if kind == "global":
                    reverse[f"transformer.{part}"] = (bfl, index)
                else:
                    reverse[f"transformer.{BLOCKS[kind]}.{{i}}.{part}"] = (f"{kind}.{{i}}.{bfl}", index)
    return reverse


REVERSE = _reverse_table()


def bfl_of(name: str) -> tuple[Target, int] | None:
    """The BFL module a diffusers module belongs to, and its part index there (for export)."""
    match = re.fullmatch(r"(transformer\.(?:transformer_blocks|single_transformer_blocks))\.(\d+)\.(.+)", name)
    template, block = (f"{match.group(1)}.{{i}}.{match.group(3)}", match.group(2)) if match else (name, None)
    found = REVERSE.get(template)
    if found is None:
        return None
    bfl, index = found
    bfl = bfl.replace("{i}", block) if block is not None else bfl
    target = _from_bfl(bfl, separator=".", table=KEYS["bfl"])
    return (target, index) if target is not None else None


def block_of(name: str) -> str:
    """A diffusers module's block, for reports: `double 3`, `single 12`, `text encoder 0`, `embedders`."""
    match = re.match(r"transformer\.(transformer_blocks|single_transformer_blocks)\.(\d+)\.", name)
    if match:
        return f"{'double' if match.group(1) == 'transformer_blocks' else 'single'} {match.group(2)}"
    match = re.match(rf"text_encoder\.{re.escape(TEXT_ENCODER['layers'])}\.(\d+)\.", name)
    if match:
        return f"text encoder {match.group(1)}"
    if name.startswith("transformer.") and name.split(".")[1] in ("norm_out", "proj_out"):
        return "final layer"
    return "embedders" if name.startswith("transformer.") else "other"


def module_kind(name: str) -> str:
    """A diffusers module's name inside its block (`attn.to_q`), as PEFT's `target_modules` reads."""
    match = re.match(r"transformer\.(?:transformer_blocks|single_transformer_blocks)\.\d+\.(.+)", name)
    if match:
        return match.group(1)
    match = re.match(rf"text_encoder\.{re.escape(TEXT_ENCODER['layers'])}\.\d+\.(.+)", name)
    if match:
        return f"text_encoder.{match.group(1)}"
    return name.removeprefix("transformer.")
