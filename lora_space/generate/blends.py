"""Blends that travel: bake a mix into one library LoRA, and link recipes to LoRAs by hash.

`LoraSpace.bake` resolves the blend the way Generate does (`LoraSpace.resolve`) and hands it to
`Blends.bake`, which reads the files (`library.tools.read_lora_file`), does the math in `lora.bake`
and puts the result into the visitor's library (`add_lora`). `Blends.link_recipe` finds a recipe's
LoRAs in the library by hash.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lora_space.core.errors import LoraFileError
from lora_space.generate.recipe import Recipe
from lora_space.library import store as library
from lora_space.library.base import current_base
from lora_space.library.hashes import LORA_SHORT, is_hash_prefix
from lora_space.library.sources import ResolvedSource, find_library_entry
from lora_space.library.tools import check_tool_work, files_work, read_lora_file
from lora_space.lora.bake import BakePart, BakeReport, bake
from lora_space.lora.export import TARGETS, save_lora
from lora_space.visitors.cleanup import check_quota
from lora_space.visitors.disk import check_write, output_folder
from lora_space.visitors.owners import LOCAL, Visitor, visitor_lora_dir

if TYPE_CHECKING:
    from lora_space.core.settings import Settings
    from lora_space.library.hashes import HashCache

logger = logging.getLogger(__name__)

MAX_NAME = 80


@dataclass
class BakeResult:
    """A baked blend: the file handed back, its library name, rank and energy kept.

    Attributes:
        file: the baked file in the `target` layout (in the caller's output folder).
        lora_name: its name in the visitor's library, usable as a `source`.
        rank: the largest module rank of the baked LoRA.
        energy_kept: the share of the blend's update it keeps (1.0: exact).
        target: the layout of `file`; the library copy is always diffusers.
        report: per-module ranks and energy, the parts and strengths.
    """

    file: Path
    lora_name: str
    rank: int
    energy_kept: float
    target: str
    report: BakeReport
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The `/bake_lora` result without the file (the endpoint adds it)."""
        return {
            "lora_name": self.lora_name,
            "rank": self.rank,
            "energy_kept": self.energy_kept,
            "exact": self.report.exact,
            "target": self.target,
            "parts": self.report.parts,
            "modules": [vars(result) for result in self.report.modules],
            "warnings": self.warnings,
        }


def _default_name(names: list[str], taken: set[str]) -> str:
    """`ink+watercolor`, made a valid library name, with ` (2)`, ` (3)`... when it is taken."""
    stem = "+".join(re.sub(r"[^\w .()+\-]+", "_", Path(name).stem if name.endswith(library.SUFFIX) else name) for name in names)
    stem = re.sub(r"^[^\w]+", "", stem)[:MAX_NAME].rstrip(" .") or "blend"
    candidate, number = stem, 2
    while candidate.casefold() in taken:
        candidate, number = f"{stem} ({number})", number + 1
    return candidate


@dataclass(frozen=True)
class Blends:
    """Baking and recipe linking for one Space.

    Attributes:
        settings: limits, the library folders.
        hashes: A1111's file hashes (kept on disk).
        add_lora: puts a file into a visitor's library (`LoraSpace.add_lora`).
    """

    settings: Settings
    hashes: HashCache
    add_lora: Callable[..., library.LibraryEntry]

    @staticmethod
    def check_request(target: str, name: str, taken: set[str]) -> str:
        """The bake's name checked (or "" for the default), and its target layout, before any file is read.

        Raises:
            LoraFileError: an unknown target, a bad name, or a name the visitor's library has.
        """
        if target not in TARGETS:
            raise LoraFileError(f"Unknown target layout {target!r}; use one of {', '.join(TARGETS)}.")
        if not name.strip():
            return ""
        name = library.check_name(name)
        if name.casefold() in taken:
            raise LoraFileError(f"Your library already has a LoRA named {name!r}; choose another name for the baked blend.")
        return name

    def bake(
        self,
        blend: list[tuple[ResolvedSource, float]],
        *,
        taken: set[str],
        rank: int = 0,
        name: str = "",
        target: str = "diffusers",
        visitor: Visitor = LOCAL,
        token: str | None = None,
        progress=None,
    ) -> BakeResult:
        """Bake a resolved blend into one LoRA in the visitor's library (see `LoraSpace.bake`).

        `name` and `target` have passed `check_request`; `taken` holds the visitor's library names.
        """
        # 1-2. The sources, resolved as Generate does (library, own library, paths, Hub), read.
        if not blend:
            raise LoraFileError("Give at least one LoRA to bake, e.g. [{'source': 'watercolor_style', 'strength': 0.8}].")
        work = len(blend) * files_work([item.file for item, _ in blend])  # the summed rank's SVD: at most n x the parts'
        check_tool_work(work, self.settings.limits, what=f"Baking {len(blend)} LoRAs")
        parts = []
        for index, (item, strength) in enumerate(blend):
            if progress is not None:
                progress(index / (len(blend) + 1), desc=f"reading {item.name}")
            parts.append(
                BakePart(
                    name=item.name,
                    lora=read_lora_file(item.file),
                    strength=strength,
                    hash=self.hashes.lora_hash(item.file)[:LORA_SHORT],
                    trigger_words=tuple(item.trigger_words),
                )
            )
        # 3. The math: the exact sum, or its SVD to `rank`.
        if progress is not None:
            progress(len(blend) / (len(blend) + 1), desc="baking")
        baked, report = bake(parts, base=current_base(self.settings, token=token), rank=rank)
        # 4. Write it (diffusers) and put it into the visitor's library; export a copy when asked. The
        #    quota and the disk bounds are checked for both copies before either is written.
        size = sum(tensor.numel() * tensor.element_size() for module in baked.modules.values() for tensor in (module.A, module.B))
        check_quota(self.settings, visitor, size)
        check_write(self.settings, size * (3 if target != "diffusers" else 2))
        name = name.strip() or _default_name([part.name for part in parts], taken)
        with output_folder(self.settings) as folder:
            path = folder / (re.sub(r"[^\w.()+-]+", "_", name) + library.SUFFIX)
            warnings = list(report.warnings) + save_lora(baked, path, step=report.step())
            returned = path
            if target != "diffusers":  # before the library: a layout that cannot hold it leaves nothing behind
                returned = path.with_name(f"{path.stem}-{target}.safetensors")
                warnings += save_lora(baked, returned, target=target, step=report.step())
        entry = self.add_lora(path, visitor=visitor, name=name)
        logger.info("baked %s (%d parts, rank %d)", entry.name, len(parts), report.rank)
        return BakeResult(
            file=returned,
            lora_name=entry.name,
            rank=report.rank,
            energy_kept=report.energy_kept,
            target=target,
            report=report,
            warnings=list(dict.fromkeys(warnings)),
        )

    def link_recipe(self, recipe: Recipe, *, visitor: Visitor = LOCAL) -> tuple[Recipe, list[str]]:
        """The recipe with each LoRA that carries a hash pointed at the library LoRA of that hash.

        A LoRA renamed since (or named otherwise by A1111/Forge) is found by its content, as A1111
        does when it pastes parameters; LoRAs without a hash, or whose hash no library file has,
        keep their names. Returns the recipe and one note per LoRA that was found under another name.
        """
        loras, notes = [], []
        for lora in recipe.loras:
            if not lora.hash or _named_entry_has_hash(self.settings, self.hashes, lora.source or lora.name, lora.hash, visitor):
                loras.append(lora)  # found by its name, with the same content: nothing to hash
                continue
            entry = find_by_hash(self.settings, self.hashes, lora.hash, visitor=visitor)
            if entry is None or entry.name in (lora.name, lora.source):
                loras.append(lora)
                continue
            notes.append(f"{lora.name!r} was found in the library by its hash {lora.hash} as {entry.name!r}.")
            loras.append(replace(lora, name=entry.name, source=entry.name, revision=""))
        return replace(recipe, loras=tuple(loras)), notes


# -- linking recipes by hash -----------------------------------------------------------------


def library_entries(settings: Settings, visitor: Visitor) -> list[library.LibraryEntry]:
    """The LoRAs `visitor` can use by name: the shared library, then their own."""
    entries = library.scan_library(settings.lora_dir)
    if not visitor.is_local:
        entries += library.scan_library(visitor_lora_dir(settings, visitor))
    return entries


def find_by_hash(settings: Settings, hashes: HashCache, prefix: str, *, visitor: Visitor = LOCAL) -> library.LibraryEntry | None:
    """The library LoRA whose A1111 hash starts with `prefix` (8 to 64 hex digits), or None.

    Each file is hashed once (`hashes` keeps the values on disk).
    """
    prefix = prefix.strip().lower()
    if not is_hash_prefix(prefix):
        return None
    for entry in library_entries(settings, visitor):
        if entry.problem is None and entry.format != "invalid":
            try:
                if hashes.lora_hash(entry.path).startswith(prefix):
                    return entry
            except (OSError, LoraFileError) as error:
                logger.info("cannot hash %s: %s", entry.location, error)
    return None


def _named_entry_has_hash(settings: Settings, hashes: HashCache, name: str, prefix: str, visitor: Visitor) -> bool:
    entry = find_library_entry(name, settings=settings, visitor=visitor)
    try:
        return entry is not None and hashes.lora_hash(entry.path).startswith(prefix)
    except (OSError, LoraFileError):
        return False
