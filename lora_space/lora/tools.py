"""The LoRA tools, from a source string to a result: convert, optimise, compare.

Each takes what a user types (a library name, a path in the library or data folder,
`user/repo`, `user/repo/file.safetensors`), resolves it like Generate does
(`sources.resolve_source`), reads it safely (`safefile.load_lora_file`) and writes any new
file into its own folder under `settings.data_dir / "outputs"`.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .. import sources
from ..errors import LoraFileError
from ..owners import LOCAL, Visitor
from ..settings import Settings
from .conflicts import ConflictReport, compare_loras
from .export import TARGETS, save_lora
from .formats import LoraSet, read_lora
from .optimize import OptimizeReport, optimize
from .safefile import load_lora_file

logger = logging.getLogger(__name__)


@dataclass
class ConvertResult:
    """A converted file, the layouts it went from and to, and what to know about it."""

    file: Path
    source_format: str
    target: str
    num_modules: int
    warnings: list[str] = field(default_factory=list)


def output_folder(settings: Settings) -> Path:
    """A new folder for one call's files: `data_dir/outputs/<random id>`."""
    folder = settings.data_dir / "outputs" / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def _file_stem(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "lora"


def read_lora_file(path: str | Path) -> LoraSet:
    """Load a local `.safetensors` LoRA with every safety check and read it in any layout."""
    tensors, metadata = load_lora_file(path)
    return read_lora(tensors, metadata)


def read_source(
    source: str, *, settings: Settings, token: str | None = None, visitor: Visitor = LOCAL
) -> tuple[LoraSet, str]:
    """Resolve a source (downloading a Hub file once) and read it; returns the LoRA and its name."""
    resolved = sources.resolve_source(source, settings=settings, token=token, visitor=visitor)
    lora = read_lora_file(resolved.file)
    if not lora.modules:
        raise LoraFileError(
            f"{resolved.name} ({lora.format} layout) has no module LoRA Space can place on FLUX; "
            "inspect it to see what it was made for."
        )
    return lora, resolved.name


def convert_source(
    source: str, target: str, *, settings: Settings, token: str | None = None, visitor: Visitor = LOCAL
) -> ConvertResult:
    """Write a source in another layout: `diffusers`, `kohya` (A1111/Forge) or `comfyui`.

    Raises:
        LoraFileError: an unknown target, or a LoRA with nothing to convert.
    """
    if target not in TARGETS:
        raise LoraFileError(f"Unknown target layout {target!r}; use one of {', '.join(TARGETS)}.")
    lora, name = read_source(source, settings=settings, token=token, visitor=visitor)
    path = output_folder(settings) / f"{_file_stem(name)}-{target}.safetensors"
    warnings = save_lora(lora, path, target=target, step={"op": "convert", "from": lora.format, "to": target})
    if lora.unplaced:
        warnings.append(f"{len(lora.unplaced)} modules have no FLUX name and were left out (e.g. {lora.unplaced[0]}).")
    return ConvertResult(file=path, source_format=lora.format, target=target, num_modules=len(lora.modules), warnings=warnings)


def optimize_source(
    source: str,
    *,
    settings: Settings,
    token: str | None = None,
    visitor: Visitor = LOCAL,
    rank: int | None = None,
    energy: float | None = None,
    dtype: str = "keep",
    prune_below: float = 0.0,
    target: str = "diffusers",
) -> tuple[Path, OptimizeReport]:
    """Resize / change dtype / prune a source (see `optimize.optimize`) and write the new file."""
    lora, name = read_source(source, settings=settings, token=token, visitor=visitor)
    smaller, report = optimize(lora, rank=rank, energy=energy, dtype=dtype, prune_below=prune_below)
    if not smaller.modules:
        raise LoraFileError(f"prune_below={prune_below} would remove every module; use a smaller share.")
    limit = settings.limits.max_lora_bytes
    if report.bytes_after > limit:  # e.g. fp32 of a large bf16 LoRA: checked before anything is written
        raise LoraFileError(
            f"The result would have {report.bytes_after / 2**20:.0f} MB, more than the {limit / 2**20:.0f} MB a LoRA "
            "may have here; lower the rank or keep a 16-bit dtype."
        )
    label = f"r{rank}" if rank is not None else f"e{energy}" if energy is not None else dtype
    path = output_folder(settings) / f"{_file_stem(name)}-{label}.safetensors"
    report.warnings += save_lora(smaller, path, target=target, step=report.step())
    return path, report


def compare_sources(
    names: list[str],
    *,
    settings: Settings,
    token: str | None = None,
    visitor: Visitor = LOCAL,
    strengths: list[float] | None = None,
) -> ConflictReport:
    """Compare 2 to `max_loras` sources; `strengths` (default 1.0 each) are in the same order."""
    names = [name.strip() for name in names if name.strip()]
    if not 2 <= len(names) <= settings.limits.max_loras:
        raise LoraFileError(f"Give 2 to {settings.limits.max_loras} LoRAs to compare, one per line; got {len(names)}.")
    if strengths is not None and len(strengths) != len(names):
        raise LoraFileError(f"Give one strength per LoRA: {len(names)} LoRAs but {len(strengths)} strengths.")
    loras: dict[str, LoraSet] = {}
    weights: dict[str, float] = {}
    for index, source in enumerate(names):
        lora, name = read_source(source, settings=settings, token=token, visitor=visitor)
        label = name if name not in loras else f"{name} ({index + 1})"
        loras[label] = lora
        weights[label] = strengths[index] if strengths is not None else 1.0
    return compare_loras(loras, weights)


def compare_files(files: dict[str, str | Path], strengths: dict[str, float] | None = None) -> ConflictReport:
    """Compare LoRAs already resolved to local files (the Generate tab's mix), by name."""
    return compare_loras({name: read_lora_file(path) for name, path in files.items()}, strengths)
