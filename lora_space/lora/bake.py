"""Bake a blend of LoRAs into one LoRA: the sum of their strength-scaled updates.

A blend applies, per module, the sum of its LoRAs' updates

    delta W = sum_i s_i * (alpha_i / r_i) * B_i @ A_i

(s_i the strength). That sum is itself a LoRA of rank sum(r_i), written without any
arithmetic on the large side:

    B = [s_1 c_1 B_1, s_2 c_2 B_2, ...]   (columns side by side, c_i = alpha_i / r_i)
    A = [A_1; A_2; ...]                   (rows stacked)

so that B @ A is the blend's update exactly, with alpha = rank (scale 1). Modules only some
LoRAs touch simply have fewer parts. The exact sum is stored in float32: each B is multiplied
by s_i * c_i, and rounding that product back to bf16 would change the update by about 1e-3
(an image off by 1/255). Asked for a lower rank, each module keeps its best rank-k
approximation by SVD: the resize of `optimize` (the same code, the same energy report), stored
in the parts' own dtype, since it is an approximation anyway and meant to be small.

This module takes LoRAs already read (`formats.LoraSet`) and the base's shapes; resolving names
and putting the result into a library is the service's work.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import torch

from ..errors import LoraFileError
from .formats import LoraModule, LoraSet
from .optimize import ModuleResult, optimize
from .shapes import BaseShapes, coverage, no_module_matched

logger = logging.getLogger(__name__)

BAKE_METADATA = "lora_space.bake"  # the parts and strengths a baked file was made from
TRIGGER_METADATA = "trigger_words"  # read back by the library (`library._METADATA_KEYS`)
EXACT_DTYPE = torch.float32  # an exact bake: its update is the blend's to float32 rounding


@dataclass(frozen=True)
class BakePart:
    """One LoRA of the blend.

    Attributes:
        name: how the report and the file's metadata name it (its library name or Hub id).
        lora: the LoRA as read (`formats.read_lora`).
        strength: its strength in the blend (0 leaves it out).
        hash: A1111's short hash of its file (`lora_space.hashes`), recorded in the metadata.
        trigger_words: its trigger words; the baked LoRA carries all of them.
    """

    name: str
    lora: LoraSet
    strength: float
    hash: str = ""
    trigger_words: tuple[str, ...] = ()


@dataclass
class BakeReport:
    """What `bake` made: the rank asked for (0: exact), each module's rank and energy kept."""

    rank_asked: int
    rank: int  # the largest module rank in the baked file
    exact: bool  # every module is the blend's update exactly (no SVD truncation)
    energy_kept: float
    modules: list[ModuleResult]
    parts: list[dict]  # name, strength, hash, modules (how many it brings)
    left_out: dict[str, list[str]] = field(default_factory=dict)  # part -> modules that miss the base
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def step(self) -> dict:
        """The short record written into the baked file's `lora_space.history` metadata."""
        return {"op": "bake", "rank": self.rank_asked, "energy_kept": round(self.energy_kept, 6), "parts": self.parts}


def _landing(part: BakePart, base: BaseShapes) -> tuple[dict[str, LoraModule], list[str]]:
    """The part's modules that land on a base module of matching shape, and those that do not.

    Raises:
        LoraFileError: none lands (the LoRA was made for another model), as Generate refuses it.
    """
    cover = coverage(part.lora, base)
    if cover.matched == 0:
        raise no_module_matched(part.name, cover.total)
    missed = set(cover.wrong_shape) | set(cover.missing)
    return {name: module for name, module in part.lora.modules.items() if name not in missed}, sorted(missed)


def _dtype(parts: list[BakePart]) -> torch.dtype:
    """The parts' common dtype, or float32 when they differ: the dtype of a truncated bake."""
    dtypes = {module.B.dtype for part in parts for module in part.lora.modules.values()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def exact_sum(parts: list[tuple[dict[str, LoraModule], float]], dtype: torch.dtype) -> dict[str, LoraModule]:
    """Per module, the blend's update as one LoRA module of rank sum(r_i) (at most min(in, out)), alpha = rank (scale 1).

    Args:
        parts: each LoRA's modules (already checked against the base) and its strength.
        dtype: the dtype of the new A and B; each B is scaled in float32 first.
    """
    names = list(dict.fromkeys(name for modules, strength in parts if strength != 0 for name in modules))
    result = {}
    for name in names:
        members = [(modules[name], strength) for modules, strength in parts if strength != 0 and name in modules]
        A = torch.cat([module.A.to(dtype) for module, _ in members])
        B = torch.cat([(module.B.float() * (strength * module.scale)).to(dtype) for module, strength in members], dim=1)
        if A.shape[0] > min(A.shape[1], B.shape[0]):
            # More rank than the module holds (safefile refuses such files): the same update,
            # factored at rank min(in, out) by a full SVD, which loses nothing but rounding.
            U, S, Vh = torch.linalg.svd(B.double() @ A.double(), full_matrices=False)
            A, B = Vh.to(dtype), (U * S).to(dtype)
        result[name] = LoraModule(A.contiguous(), B.contiguous(), None)
    return result


def bake(parts: list[BakePart], *, base: BaseShapes, rank: int = 0) -> tuple[LoraSet, BakeReport]:
    """One LoRA whose update is the blend's (rank 0), or its best approximation at `rank`.

    Args:
        parts: the blend, in order; a part at strength 0 contributes nothing.
        base: the base model's shapes: modules that miss it are left out (reported), and a part
            none of whose modules land is refused, as Generate refuses it.
        rank: 0 for the exact sum (rank = the sum of the parts' ranks, per module); else the
            most rank a module keeps, by SVD (`optimize.optimize`).

    Returns:
        the baked LoRA (diffusers module names, metadata naming its parts) and the report.

    Raises:
        LoraFileError: no parts, a negative rank, every strength 0, or a part that fits no module.
    """
    # 1. Check the arguments and each part against the base.
    if not parts:
        raise LoraFileError("Give at least one LoRA to bake, with its strength.")
    if rank < 0:
        raise LoraFileError(f"rank={rank} is not allowed; use 0 for an exact bake or a rank of 1 or more.")
    if all(part.strength == 0 for part in parts):
        raise LoraFileError("Every strength is 0, so the blend changes nothing; give at least one LoRA a strength.")
    landed = [_landing(part, base) for part in parts]
    # 2. The exact sum, then (when asked) the SVD resize with its energy report.
    summed = exact_sum([(modules, part.strength) for part, (modules, _) in zip(parts, landed)], EXACT_DTYPE)
    exact = LoraSet(modules=summed, format="diffusers")
    baked, resized = optimize(exact, rank=rank or None)
    energy_kept = resized.energy_kept if rank else 1.0
    ranks = [module.rank for module in baked.modules.values()]
    truncated = any(result.energy_kept < 1.0 for result in resized.modules)  # a rank-deficient sum loses nothing
    if truncated:  # an approximation: as small as the parts
        dtype = _dtype(parts)
        baked.modules = {name: LoraModule(m.A.to(dtype), m.B.to(dtype), m.alpha) for name, m in baked.modules.items()}
    # 3. The report and the metadata naming the parts.
    report = BakeReport(
        rank_asked=rank,
        rank=max(ranks),
        exact=not rank or not truncated,
        energy_kept=energy_kept,
        modules=resized.modules,
        parts=[
            {"name": part.name, "strength": part.strength, "hash": part.hash, "modules": len(modules)}
            for part, (modules, _) in zip(parts, landed)
        ],
        left_out={part.name: missed for part, (_, missed) in zip(parts, landed) if missed},
    )
    for name, missed in report.left_out.items():
        report.warnings.append(f"{len(missed)} modules of {name!r} do not match the base model (e.g. {missed[0]}); they were left out.")
    if rank and truncated:
        lowest = min(resized.modules, key=lambda result: result.energy_kept)
        report.warnings.append(
            f"Rank {rank} keeps {energy_kept:.2%} of the blend's energy (the least in {lowest.name}: "
            f"{lowest.energy_kept:.1%}), so its images differ a little from the blend's; bake at rank 0 for an exact copy."
        )
    words = list(dict.fromkeys(word for part in parts if part.strength != 0 for word in part.trigger_words))
    metadata = {BAKE_METADATA: json.dumps({"rank": rank, "energy_kept": round(energy_kept, 6), "parts": report.parts})}
    if words:
        metadata[TRIGGER_METADATA] = json.dumps(words)
    logger.info("baked %d LoRAs into %d modules (rank %d, energy kept %.4f)", len(parts), len(ranks), report.rank, energy_kept)
    return LoraSet(modules=baked.modules, format="diffusers", metadata=metadata), report

