"""Read a LoRA in any layout into one form, and hand diffusers what it can load.

Every layout stores, per module, a down matrix A (rank x in), an up matrix B
(out x rank) and a scale alpha. Applied at strength s, a LoRA changes a weight by

    delta W = s * (alpha / rank) * B @ A

`read_lora` turns any layout into a `LoraSet`: diffusers module names -> `LoraModule`
(A, B and alpha exactly as stored, no arithmetic, so conversions keep every bit).
Fused BFL modules (kohya/ComfyUI `img_attn.qkv`, `linear1`) are split into diffusers'
separate q/k/v/mlp modules: a dense fused module shares its A between the parts; a
block-diagonal one (as `export` writes, or sd-scripts' split-qkv) splits A as well.

`to_diffusers` is what the engine calls: a state dict with `transformer.`/`text_encoder.`
keys and alpha folded into B, ready for `FluxPipeline.load_lora_weights(state_dict)`.
Layouts the key table does not know are passed to diffusers' own converter
(`FluxPipeline.lora_state_dict`), which also folds alpha.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch

from ..errors import LoraFileError
from .keymap import Target, detect_format, split_key, target_of, unsupported_part

logger = logging.getLogger(__name__)

SPLIT_METADATA = "lora_space.split"  # BFL module -> part ranks, written by `export`
ADAPTER_METADATA = "lora_adapter_metadata"  # diffusers' LoRA config in the header
FALLBACK_ERRORS = (ValueError, KeyError, AssertionError, NotImplementedError, RuntimeError, IndexError, TypeError, AttributeError)


@dataclass
class LoraModule:
    """One module's update: delta W = (alpha / rank) * B @ A (times the strength)."""

    A: torch.Tensor  # (rank, in): lora_A / lora_down
    B: torch.Tensor  # (out, rank): lora_B / lora_up
    alpha: float | None = None  # None: not stored, which means alpha == rank (scale 1)

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.B.shape[0])

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def delta(self) -> torch.Tensor:
        """The full update (alpha / rank) * B @ A in float32; (out, in), so only for small modules."""
        return self.scale * (self.B.float() @ self.A.float())

    def inner(self, other: LoraModule) -> float:
        """<delta W, other's delta W> (Frobenius), without forming either (out, in) matrix.

        <s1 B1 A1, s2 B2 A2> = s1 s2 trace(A1^T B1^T B2 A2) = s1 s2 trace((B1^T B2) (A2 A1^T)),
        two small rank x rank products.
        """
        left = self.B.double().T @ other.B.double()  # (r1, r2)
        right = other.A.double() @ self.A.double().T  # (r2, r1)
        return self.scale * other.scale * float(torch.trace(left @ right))

    def norm(self) -> float:
        """||delta W|| (Frobenius)."""
        return max(self.inner(self), 0.0) ** 0.5


@dataclass
class LoraSet:
    """A LoRA read from any layout: diffusers module names (with component prefix) -> modules."""

    modules: dict[str, LoraModule]
    format: str
    metadata: dict[str, str] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)  # file modules that land on no diffusers module
    warnings: list[str] = field(default_factory=list)


def _alpha_of(tensor: torch.Tensor | None) -> float | None:
    """An `.alpha` tensor's value; None when absent or not read (a header-only view)."""
    if tensor is None or tensor.is_meta or tensor.numel() != 1:
        return None
    return float(tensor.float().item())


def _adapter_alphas(metadata: dict[str, str]) -> dict[str, dict]:
    """diffusers' saved LoRA config per component (`transformer`, `text_encoder`)."""
    raw = metadata.get(ADAPTER_METADATA)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested 100,000 deep
        return {}
    per_component: dict[str, dict] = defaultdict(dict)
    for key, value in config.items() if isinstance(config, dict) else ():
        component, _, name = key.partition(".")
        per_component[component][name] = value
    return dict(per_component)


def _config_alpha(configs: dict[str, dict], name: str, rank: int) -> float | None:
    """The alpha diffusers' saved config gives module `name` (PEFT's pattern rules)."""
    from peft.utils.other import get_pattern_key

    component, _, inner = name.partition(".")
    config = configs.get(component)
    if not config or config.get("lora_alpha") is None:
        return None
    pattern = config.get("alpha_pattern") or {}
    key = get_pattern_key(list(pattern), inner)
    alpha = float(pattern[key] if key in pattern else config["lora_alpha"])
    return alpha * rank**0.5 if config.get("use_rslora") else alpha  # rsLoRA scales by alpha / sqrt(rank)


def _splits(metadata: dict[str, str]) -> dict[str, list[int]]:
    """The part ranks `export` records for block-diagonal fused modules; {} when absent or malformed."""
    try:
        splits = json.loads(metadata.get(SPLIT_METADATA, "{}"))
    except ValueError:
        return {}
    if not isinstance(splits, dict):
        return {}
    return {
        name: ranks
        for name, ranks in splits.items()
        if isinstance(ranks, list) and all(type(rank) is int for rank in ranks)
    }


def _is_block_diagonal(A: torch.Tensor, B: torch.Tensor, outs: list[int]) -> bool:
    """Whether B keeps each part's rows to its own rank columns (sd-scripts' split-qkv layout)."""
    parts = len(outs)
    if A.is_meta or A.shape[0] % parts:
        return False
    rank, row = A.shape[0] // parts, 0
    for index, out in enumerate(outs):
        block = B[row : row + out]
        if bool(block[:, : index * rank].any()) or bool(block[:, (index + 1) * rank :].any()):
            return False
        row += out
    return True


def _place(target: Target, A: torch.Tensor, B: torch.Tensor, alpha: float | None, ranks: list[int] | None) -> dict[str, LoraModule]:
    """Split one file module onto its diffusers modules, moving tensors but never changing a value."""
    # 1. A single module; FLUX's final modulation stores its halves the other way round.
    if not target.fused:
        if target.swap:
            half = B.shape[0] // 2
            B = torch.cat([B[half:], B[:half]])
        return {target.names[0]: LoraModule(A, B, alpha)}
    # 2. Output rows per part from the shares (q, k, v: 1 each; the MLP input: 4).
    rows, total = B.shape[0], sum(target.shares)
    if rows % total:
        raise ValueError(f"{rows} output rows do not split into {target.shares}")
    outs = [rows // total * share for share in target.shares]
    # 3. Block-diagonal (part ranks recorded, or detected) splits A too; dense shares A.
    starts = _part_columns(ranks, A.shape[0], len(outs))
    ranks = ranks if starts is not None else None
    if ranks is None and _is_block_diagonal(A, B, outs):
        width = A.shape[0] // len(outs)
        starts = [index * width for index in range(len(outs))]
        # A part that is all zeros (kohya's split layout pads a part the LoRA lacks) is no module.
        ranks = [width if B[sum(outs[:index]) : sum(outs[: index + 1])].any() else 0 for index in range(len(outs))]
    placed: dict[str, LoraModule] = {}
    row = 0
    for index, (name, out) in enumerate(zip(target.names, outs)):
        if ranks is None:
            placed[name] = LoraModule(A, B[row : row + out].contiguous(), alpha)
        elif ranks[index] > 0:
            column, part_rank = starts[index], ranks[index]
            part_alpha = None if alpha is None else alpha * part_rank / A.shape[0]
            placed[name] = LoraModule(
                A[column : column + part_rank].contiguous(),
                B[row : row + out, column : column + part_rank].contiguous(),
                part_alpha,
            )
        row += out
    return placed


def _part_columns(ranks: list[int] | None, total: int, parts: int) -> list[int] | None:
    """Where each part's rank columns start, from the part ranks `export` records; None if they do not fit.

    Two layouts: the parts side by side (sum of ranks = the fused rank, as files written before
    kohya's split layout have them), or kohya's split layout (each part in its own `total / parts`
    columns, a lower rank or a missing part padded with zeros).
    """
    if ranks is None or len(ranks) != parts or min(ranks) < 0:
        return None
    if sum(ranks) == total:
        return [sum(ranks[:index]) for index in range(parts)]
    if total % parts == 0 and max(ranks) <= total // parts:
        return [index * (total // parts) for index in range(parts)]
    return None


def _group(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """File modules -> {role: key}, and the keys that are no LoRA key at all."""
    modules: dict[str, dict[str, str]] = defaultdict(dict)
    extras = []
    for key in tensors:
        parsed = split_key(key)
        if parsed is None:
            extras.append(key)
        else:
            modules[parsed[0]][parsed[1]] = key
    return dict(modules), extras


def _diffusers_fallback(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """diffusers' own converters, for layouts the key table does not know; None when they fail."""
    from diffusers import FluxPipeline

    try:
        converted = FluxPipeline.lora_state_dict(dict(tensors))
    except FALLBACK_ERRORS as error:
        logger.info("diffusers could not convert %d keys either: %s", len(tensors), error)
        return None
    return converted if isinstance(converted, dict) else None


def read_lora(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, *, _fallback: bool = True) -> LoraSet:
    """Read a LoRA in any layout into diffusers module names, keeping every value as stored.

    Works on meta tensors too (a header-only view): then fused modules are taken as
    dense unless the file's metadata records their part ranks.

    Args:
        tensors: the file's tensors (`safefile.load_lora_file`), or meta tensors of its header.
        metadata: the file's string metadata.

    Returns:
        a `LoraSet`; modules that land nowhere are listed in `unplaced`, not dropped silently.
    """
    metadata = dict(metadata or {})
    # 1. Layout, file modules, and what the header says about alphas and fused ranks.
    fmt = detect_format(list(tensors))
    grouped, extras = _group(tensors)
    configs = _adapter_alphas(metadata)
    splits = _splits(metadata)
    result = LoraSet(modules={}, format=fmt, metadata=metadata)
    if fmt == "peft" and not configs and not any("alpha" in roles for roles in grouped.values()):
        result.warnings.append("A raw PEFT file keeps alpha in adapter_config.json, not here; alpha is taken as the rank.")
    if extras:
        result.warnings.append(f"{len(extras)} tensors are not LoRA weights and were left out (e.g. {extras[0]}).")
    leftover: dict[str, torch.Tensor] = {}
    # 2. Place every file module that has both matrices.
    for module, roles in grouped.items():
        if "A" not in roles or "B" not in roles:
            if set(roles) != {"alpha"}:
                result.warnings.append(f"{module} has only {sorted(roles)}; it was left out.")
            continue
        A, B = tensors[roles["A"]], tensors[roles["B"]]
        target = target_of(module, fmt)
        if target is None or unsupported_part(module):
            leftover.update({key: tensors[key] for key in roles.values()})
            continue
        alpha = _alpha_of(tensors.get(roles.get("alpha", "")))
        try:
            placed = _place(target, A, B, alpha, splits.get(target.bfl))
        except ValueError as error:
            result.warnings.append(f"{module}: {error}; it was left out.")
            leftover.update({key: tensors[key] for key in roles.values()})
            continue
        for name, lora_module in placed.items():
            if lora_module.alpha is None and "alpha" not in roles:
                lora_module.alpha = _config_alpha(configs, name, lora_module.rank)
            result.modules[name] = lora_module
    # 3. What the table could not place: diffusers' converters, then report the rest.
    unplaced = sorted({split_key(key)[0] for key in leftover})
    unsupported = [module for module in unplaced if unsupported_part(module)]
    others = {key: value for key, value in leftover.items() if not unsupported_part(key)}
    if others and _fallback and fmt != "diffusers":
        converted = _diffusers_fallback(others)
        extra = read_lora(converted, None, _fallback=False) if converted else None
        if extra is not None and extra.modules:
            result.modules.update(extra.modules)
            unplaced = sorted(unsupported + extra.unplaced)
    for label in sorted({unsupported_part(module) for module in unsupported}):
        result.warnings.append(f"Its {label} parts cannot be loaded into FLUX by diffusers and were left out.")
    result.unplaced = unplaced
    return result


def adapter_metadata(modules: dict[str, LoraModule], *, folded: bool = False) -> dict:
    """diffusers' LoRA config for these modules (`transformer.r`, `transformer.lora_alpha`, ...).

    With `folded`, alpha equals the rank everywhere (the alphas were folded into B).
    """
    per_component: dict[str, dict[str, LoraModule]] = defaultdict(dict)
    for name, module in modules.items():
        component, _, inner = name.partition(".")
        per_component[component][inner] = module
    config: dict = {}
    for component, members in per_component.items():
        ranks = {inner: module.rank for inner, module in members.items()}
        alphas = {
            inner: float(module.rank if folded or module.alpha is None else module.alpha) for inner, module in members.items()
        }
        rank = Counter(ranks.values()).most_common(1)[0][0]
        alpha = Counter(alphas.values()).most_common(1)[0][0]
        config[f"{component}.r"] = rank
        config[f"{component}.lora_alpha"] = alpha
        config[f"{component}.rank_pattern"] = {f"^{inner}": r for inner, r in ranks.items() if r != rank}
        config[f"{component}.alpha_pattern"] = {f"^{inner}": a for inner, a in alphas.items() if a != alpha}
        config[f"{component}.target_modules"] = sorted(members)
    return config


def to_diffusers(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """A state dict diffusers loads as it is: `transformer.<module>.lora_A.weight` / `lora_B.weight`.

    Alpha is folded into B (scale alpha / rank), so `load_lora_weights(state_dict)` needs no
    config. Text-encoder modules keep their `text_encoder.` prefix.

    Returns:
        the state dict, and diffusers' adapter config describing it (alpha == rank everywhere).

    Raises:
        LoraFileError: no module lands anywhere (unknown layout or another base model).
    """
    lora = read_lora(tensors, metadata)
    if not lora.modules:
        raise LoraFileError(
            f"This LoRA ({lora.format} layout) has no module diffusers' FLUX loader can place; "
            "inspect it in LoRA tools to see which base model it was made for."
        )
    for warning in lora.warnings:
        logger.warning("to_diffusers: %s", warning)
    state_dict: dict[str, torch.Tensor] = {}
    for name, module in lora.modules.items():
        B = module.B if module.scale == 1 else (module.B.float() * module.scale).to(module.B.dtype)
        state_dict[f"{name}.lora_A.weight"] = module.A
        state_dict[f"{name}.lora_B.weight"] = B
    return state_dict, adapter_metadata(lora.modules, folded=True)
