"""The LoRA tools, from a source string to a result: convert, optimise, compare.

Each takes what a user types (a library name, a path in the library or data folder,
`user/repo`, `user/repo/file.safetensors`), resolves it like Generate does
(`sources.resolve_source`), reads it safely (`safefile.load_lora_file`) and writes any new
file into its own folder under `settings.data_dir / "outputs"` (`disk.output_folder`, within
the disk bounds). Resize and compare first estimate their work from the files' headers
(`optimize.svd_work`) and refuse past `Limits.max_tool_work`, before any tensor is loaded.
`LoraSpace` runs each inside one of the caller's turns (`fairness`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import sources
from ..disk import output_folder
from ..errors import LimitError, LoraFileError
from ..owners import LOCAL, Visitor
from ..settings import Limits, Settings
from .conflicts import ConflictReport, compare_loras
from .export import TARGETS, save_lora
from .formats import LoraSet, read_lora
from .optimize import OptimizeReport, optimize, svd_work
from .safefile import load_lora_file, read_local_header

logger = logging.getLogger(__name__)


@dataclass
class ConvertResult:
    """A converted file, the layouts it went from and to, and what to know about it."""

    file: Path
    source_format: str
    target: str
    num_modules: int
    warnings: list[str] = field(default_factory=list)


def check_tool_work(work: float, limits: Limits, *, what: str) -> None:
    """Refuse a tool call whose work (billions of operations, `optimize.svd_work`) is past `limits.max_tool_work`.

    Raises:
        LimitError: says how much work it is and what to do instead.
    """
    if work > limits.max_tool_work:
        raise LimitError(
            f"{what} is about {work:,.0f} billion operations of SVD work (per module (in + out) x rank^2 + rank^3), "
            f"more than the {limits.max_tool_work:,.0f} billion one call may do here (LORA_SPACE_MAX_TOOL_WORK); "
            "pick a LoRA of lower rank, or run it on your own machine."
        )


def files_work(files: list[Path]) -> float:
    """The SVD work of each file's modules, summed (`optimize.svd_work`), from the headers alone."""
    return sum(svd_work(read_local_header(file)) for file in files)


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
    return read_resolved(sources.resolve_source(source, settings=settings, token=token, visitor=visitor))


def read_resolved(resolved: sources.ResolvedSource) -> tuple[LoraSet, str]:
    """Read a resolved source; returns the LoRA and its name.

    Raises:
        LoraFileError: nothing in it can be placed on FLUX.
    """
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
    with output_folder(settings) as folder:
        path = folder / f"{_file_stem(name)}-{target}.safetensors"
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
    """Resize / change dtype / prune a source (see `optimize.optimize`) and write the new file.

    Raises:
        LimitError: a resize whose work is past `Limits.max_tool_work` (from the header, before loading).
    """
    resolved = sources.resolve_source(source, settings=settings, token=token, visitor=visitor)
    check_tool_work(files_work([resolved.file]), settings.limits, what=f"Resizing {resolved.name}")
    lora, name = read_resolved(resolved)
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
    with output_folder(settings) as folder:
        path = folder / f"{_file_stem(name)}-{label}.safetensors"
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
    """Compare 2 to `max_loras` sources; `strengths` (default 1.0 each) are in the same order.

    Raises:
        LoraFileError: fewer than 2 or more than `max_loras` sources, or one file named twice.
        LimitError: work past `Limits.max_tool_work` (each file's, times the pairs it is in).
    """
    names = [name.strip() for name in names if name.strip()]
    if not 2 <= len(names) <= settings.limits.max_loras:
        raise LoraFileError(f"Give 2 to {settings.limits.max_loras} LoRAs to compare, one per line; got {len(names)}.")
    if strengths is not None and len(strengths) != len(names):
        raise LoraFileError(f"Give one strength per LoRA: {len(names)} LoRAs but {len(strengths)} strengths.")
    resolved = [sources.resolve_source(source, settings=settings, token=token, visitor=visitor) for source in names]
    sources.check_distinct(resolved)
    check_tool_work(files_work([item.file for item in resolved]) * (len(resolved) - 1), settings.limits, what=f"Comparing {len(resolved)} LoRAs")
    loras: dict[str, LoraSet] = {}
    weights: dict[str, float] = {}
    for index, item in enumerate(resolved):
        lora, name = read_resolved(item)
        label = name if name not in loras else f"{name} ({index + 1})"
        loras[label] = lora
        weights[label] = strengths[index] if strengths is not None else 1.0
    return compare_loras(loras, weights)


def compare_files(files: dict[str, str | Path], strengths: dict[str, float] | None = None) -> ConflictReport:
    """Compare LoRAs already resolved to local files (the Generate tab's mix), by name."""
    return compare_loras({name: read_lora_file(path) for name, path in files.items()}, strengths)
