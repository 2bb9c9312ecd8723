"""What the UI and the API call: one `LoraSpace` per process, holding settings and engine.

Handlers stay thin: they turn widget values into these calls. Nothing here imports gradio.
"""

from __future__ import annotations

import functools
import json
import secrets
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import blends, library
from .engine import MAX_SEED, Engine, GenerationRequest, LoraSpec, Options, check_work
from .cleanup import check_quota
from .fairness import VisitorGate, one_turn_per_call
from .errors import LimitError, LoraFileError, PromptError
from .discover import Discover
from .grid import labelled_grid
from .hashes import LORA_SHORT, MODEL_SHORT, HashCache
from .lora.conflicts import PairSummary, mix_warnings
from .lora.tools import compare_files
from .owners import LOCAL, Visitor, visitor_lora_dir
from .prompts import (
    MAX_STRENGTH,
    MIN_STRENGTH,
    ParsedPrompt,
    build_model_prompt,
    parse_prompt,
)
from .recipe import LoraRef, Recipe, recipe_to_json, save_png
from .settings import Settings
from .sources import ResolvedSource, resolve_source

# The course: "Usually 0.6-1.0 for balanced results"; "values too high can cause artifacts".
STRENGTH_SUM_WARNING = 1.5
MAX_SWEEP_CELLS = 36
MAX_BATCH_PROMPTS = 24


@dataclass
class GenerateOutput:
    files: list[Path]
    metadata: dict
    warnings: list[str] = field(default_factory=list)


@dataclass
class SweepOutput:
    grid: Path
    cells: list[GenerateOutput]
    metadata: dict


@dataclass
class BatchOutput:
    archive: Path
    outputs: list[GenerateOutput]


Blend = list[tuple[ResolvedSource, float]]


def loras_from_dicts(loras: list[dict] | None) -> list[tuple[str, float]]:
    """The API's `[{"source": ..., "strength": ...}]`, checked, as `(source, strength)` pairs."""
    choices = []
    for index, item in enumerate(loras or []):
        if not isinstance(item, dict) or not isinstance(item.get("source"), str):
            raise PromptError(
                f"loras[{index}] = {item!r} is not of the form {{'source': 'name or user/repo', 'strength': 0.8}}."
            )
        strength = item.get("strength", 1.0)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise PromptError(f"loras[{index}]: strength {strength!r} is not a number; use e.g. 0.8.")
        choices.append((item["source"].strip(), check_strength(float(strength), f"loras[{index}]")))
    return choices


def check_strength(strength: float, where: str) -> float:
    if not MIN_STRENGTH <= strength <= MAX_STRENGTH:
        raise PromptError(
            f"{where}: strength {strength:g} is outside {MIN_STRENGTH:g}..{MAX_STRENGTH:g}; the course's range is 0.6-1.0."
        )
    return strength


def parse_strengths(text: str) -> list[float]:
    """`"0, 0.5, 1"` -> `[0.0, 0.5, 1.0]`, each in range."""
    try:
        values = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise PromptError(f"Strengths {text!r} are not numbers; write them like '0, 0.4, 0.8, 1.2'.") from None
    if not values:
        raise PromptError("No strengths given; write them like '0, 0.4, 0.8, 1.2'.")
    return [check_strength(value, "sweep") for value in values]


def _pair_at_unit_strength(name_a: str, file_a: str, key_a: str, name_b: str, file_b: str, key_b: str) -> PairSummary:
    """How two LoRA files relate at strength 1 each; `key_*` name the contents, for caching."""
    return compare_files({name_a: file_a, name_b: file_b}).pairs[0]


def conflict_warnings(blend: Blend, pair_summary: Callable[..., PairSummary] = _pair_at_unit_strength) -> list[str]:
    """The course's "conflict resolution": LoRAs of the mix that fight or overshoot on shared layers."""
    active = [(item, strength) for item, strength in blend if strength != 0]
    names = [item.name for item, _ in active]
    # Two LoRAs may share a name (`alice/style`, `bob/style`): then each is called by its source.
    labels = [item.name if names.count(item.name) == 1 else item.source for item, _ in active]
    pairs = [
        pair_summary(labels[i], str(a.file), a.key, labels[j], str(b.file), b.key)
        for i, (a, _) in enumerate(active)
        for j, (b, _) in enumerate(active)
        if i < j
    ]
    return mix_warnings(pairs, {label: strength for label, (_, strength) in zip(labels, active)})


def strength_warnings(strengths: list[float]) -> list[str]:
    """The course: 0.6-1.0 is balanced; too high causes artifacts. Warn on a heavy blend."""
    total = sum(abs(strength) for strength in strengths)
    if total > STRENGTH_SUM_WARNING:
        return [
            f"The LoRA strengths add up to {total:.2f}; past about {STRENGTH_SUM_WARNING} blends often show "
            "artifacts. Lower the strongest LoRA first (the course's range is 0.6-1.0 each)."
        ]
    return []


class LoraSpace:
    """The app's operations on one base model."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        # How two LoRA files relate, computed once per pair of file contents.
        self._pair_summary = functools.lru_cache(maxsize=128)(_pair_at_unit_strength)
        # Calls running per visitor, bounded by `settings.limits.max_requests_per_visitor`.
        self.gate = VisitorGate()
        # Training jobs (lora_space/train/jobs.py): queued, trained chunk by chunk on this engine.
        from .train.jobs import JobManager

        self.jobs = JobManager(self)
        # A1111's file hashes (`Lora hashes`, `Model hash`), computed once per file, kept on disk.
        self.hashes = HashCache(settings.data_dir / "cache" / "file_hashes.json")
        # Hub search and evaluation for the Discover tab, with its short-lived search cache.
        self.discover = Discover(settings)

    @property
    def outputs_dir(self) -> Path:
        return self.settings.data_dir / "outputs"

    def new_output_dir(self) -> Path:
        """A fresh folder for one call's files, named so that only its caller can find it."""
        folder = self.outputs_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    # -- library ------------------------------------------------------------------------

    def list_loras(self, visitor: Visitor = LOCAL) -> list[dict]:
        """The shared library, then what `visitor` added (`owner`: "shared" or "you")."""
        entries = [entry.to_dict() | {"owner": "shared"} for entry in library.scan_library(self.settings.lora_dir)]
        if not visitor.is_local:
            own = library.scan_library(visitor_lora_dir(self.settings, visitor))
            entries += [entry.to_dict() | {"owner": "you"} for entry in own]
        else:  # a local run also lists the Hub LoRAs in its Hub cache (on a Space that cache holds others' downloads)
            entries += [entry | {"owner": "hub cache"} for entry in self.discover.cached_entries()]
        return entries

    def add_lora(
        self,
        path: Path | str,
        *,
        visitor: Visitor = LOCAL,
        name: str | None = None,
        trigger_words: tuple[str, ...] | list[str] = (),
        overwrite: bool = False,
    ) -> library.LibraryEntry:
        """Put a LoRA file into `visitor`'s library (API.md "Who owns what").

        On a local run that is the shared library, as the course describes. On a Space it is
        the visitor's own library: the shared one is read-only for visitors, and a name the
        shared library has is refused, so that no visitor's name shadows it for anyone.

        Raises:
            LoraFileError: not a usable `.safetensors` file, a bad name, or the name is taken.
        """
        stem = Path(path).stem if name is None else name
        if not visitor.is_local and library.find_entry(self.settings.lora_dir, stem.strip().removesuffix(library.SUFFIX)):
            raise LoraFileError(
                f"The shared library already has a LoRA named {stem!r}; choose another name for yours."
            )
        size = Path(path).stat().st_size
        if size > self.settings.storage.max_upload_bytes:
            raise LimitError(
                f"The file has {size / 2**20:.0f} MB, more than the {self.settings.storage.max_upload_bytes / 2**20:.0f} MB "
                "a LoRA upload may have; resize it first (LoRA tools, Resize)."
            )
        check_quota(self.settings, visitor, size)  # a visitor's area has a quota (API.md)
        folder = visitor_lora_dir(self.settings, visitor)
        entry = library.add_to_library(folder, path, name=name, overwrite=overwrite)
        words = [word.strip() for word in trigger_words if word.strip()]
        if words:
            library.write_sidecar(folder, entry.name, words)
            entry = library.find_entry(folder, entry.location) or entry
        return entry

    # -- generate -----------------------------------------------------------------------

    def resolve(
        self,
        prompt: str,
        loras: list[tuple[str, float]],
        *,
        token: str | None = None,
        swept: tuple[str, ...] = (),
        found: dict[str, ResolvedSource] | None = None,
        visitor: Visitor = LOCAL,
    ) -> tuple[ParsedPrompt, Blend]:
        """Parse the prompt and find every LoRA named by slots and tags, before any GPU time.

        `swept` LoRAs come last, at strength 0, replacing any slot or tag that names them.
        `found` remembers sources already resolved in this call (a batch resolves each once).
        """
        found = {} if found is None else found
        limits = self.settings.limits
        parsed = parse_prompt(prompt, max_chars=limits.max_prompt_chars)
        choices = [
            (source, strength)
            for source, strength in list(loras) + [(tag.name, tag.strength) for tag in parsed.tags]
            if source not in swept
        ] + [(source, 0.0) for source in swept]
        if len(choices) > limits.max_loras:
            raise LimitError(f"{len(choices)} LoRAs asked for; use at most {limits.max_loras} at once.")
        sources = [source for source, _ in choices]
        for source in sources:
            if sources.count(source) > 1:
                raise PromptError(f"LoRA {source!r} is given twice (in a slot and a tag?); give it once.")
        for source, _ in choices:
            if source not in found:
                found[source] = resolve_source(source, settings=self.settings, token=token, visitor=visitor)
        return parsed, [(found[source], strength) for source, strength in choices]

    @one_turn_per_call
    def generate(
        self,
        prompt: str,
        loras: list[dict] | None = None,
        options: Options = Options(),
        *,
        token: str | None = None,
        visitor: Visitor = LOCAL,
        progress=None,
    ) -> GenerateOutput:
        """Generate images with a blend of LoRAs from slots (`loras`) and `<lora:...>` tags."""
        parsed, blend = self.resolve(prompt, loras_from_dicts(loras), token=token, visitor=visitor)
        return self.run(parsed, blend, options, self.new_output_dir(), progress=progress)

    def run(self, parsed: ParsedPrompt, blend: Blend, options: Options, folder: Path, *, progress=None, stem: str = "image") -> GenerateOutput:
        """Generate for a resolved blend and save each PNG with its recipe in `folder`."""
        # 1. The prompt as sent: tags removed, trigger words of every LoRA not at 0 inserted.
        model_prompt = build_model_prompt(parsed, [(item.trigger_words, strength) for item, strength in blend])
        request = GenerationRequest(
            prompt=model_prompt,
            options=options,
            loras=tuple(LoraSpec(item.key, str(item.file), item.name, strength) for item, strength in blend),
        )
        request.check(self.settings.limits)
        warnings = strength_warnings([strength for _, strength in blend]) + conflict_warnings(blend, self._pair_summary)
        # 2. The recipe's LoRAs, checked before any GPU time (a name a tag cannot hold is refused here).
        refs = tuple(
            LoraRef(
                item.name,
                strength,
                source=item.source,
                revision=item.revision or "",
                trigger_words=tuple(item.trigger_words),
                hash=self.hashes.lora_hash(item.file)[:LORA_SHORT],
            )
            for item, strength in blend
        )
        # 3. Run it on the shared engine, then save each image (seed + index) with its recipe.
        result = self.engine.generate(request, progress=progress)
        warnings += result.warnings
        base_file = Path(self.settings.base_model)
        model_hash = self.hashes.model_hash(base_file)[:MODEL_SHORT] if base_file.is_file() else ""  # a folder has none
        files = []
        for index, image in enumerate(result.images):
            recipe = Recipe(
                prompt=model_prompt,
                negative_prompt=options.negative_prompt,
                steps=options.steps,
                guidance=options.guidance,
                true_cfg=options.true_cfg,
                seed=result.seed + index,
                width=options.width,
                height=options.height,
                model=self.settings.base_model_label,
                loras=refs,
                model_hash=model_hash,
            )
            files.append(Path(save_png(image, folder / f"{stem}_{index:02d}_seed{result.seed + index}.png", recipe)))
        metadata = {
            "prompt": model_prompt,
            "prompt_raw": parsed.raw,
            "negative_prompt": options.negative_prompt,
            "seed": result.seed,
            "steps": options.steps,
            "guidance": options.guidance,
            "true_cfg": options.true_cfg,
            "width": options.width,
            "height": options.height,
            "num_images": options.num_images,
            "base_model": self.settings.base_model_label,
            "loras": [
                {"name": ref.name, "source": ref.source, "strength": ref.strength, "trigger_words": list(ref.trigger_words)}
                | ({"revision": ref.revision} if ref.revision else {})
                | ({"hash": ref.hash} if ref.hash else {})
                for ref in refs
            ],
            "fused": result.fused,
            "warnings": warnings,
            "timings": {key: round(value, 4) for key, value in result.timings.items()},
        }
        return GenerateOutput(files=files, metadata=metadata, warnings=warnings)

    # -- strength sweep -------------------------------------------------------------------

    @one_turn_per_call
    def sweep(
        self,
        prompt: str,
        loras: list[dict] | None,
        x_source: str,
        x_strengths: list[float],
        y_source: str = "",
        y_strengths: list[float] | None = None,
        options: Options = Options(),
        *,
        token: str | None = None,
        visitor: Visitor = LOCAL,
        progress=None,
    ) -> SweepOutput:
        """The same seed at each strength of one LoRA (or an X/Y grid of two), as one labelled grid."""
        y_values: list[float | None] = list(y_strengths or []) if y_source.strip() else [None]
        cells = len(x_strengths) * len(y_values)
        if cells > MAX_SWEEP_CELLS:
            raise LimitError(f"The sweep has {cells} images; use at most {MAX_SWEEP_CELLS} (fewer strengths).")
        if y_source.strip() and not y_strengths:
            raise PromptError(f"Give strengths for the second LoRA {y_source!r}, like '0, 0.5, 1'.")
        for value in [*x_strengths, *(value for value in y_values if value is not None)]:  # before any GPU time
            check_strength(float(value), "sweep")
        check_work(self.settings.limits.work(options, images=cells), self.settings.limits, what=f"The sweep of {cells} images")
        swept = (x_source,) + ((y_source,) if y_source.strip() else ())
        parsed, blend = self.resolve(prompt, loras_from_dicts(loras), token=token, swept=swept, visitor=visitor)
        fixed, x_item = blend[: len(blend) - len(swept)], blend[len(blend) - len(swept)]
        y_item = blend[-1] if y_source.strip() else None
        options = replace(options, num_images=1, seed=options.seed if options.seed >= 0 else secrets.randbelow(MAX_SEED))
        folder = self.new_output_dir()
        outputs: list[GenerateOutput] = []
        rows = []
        for row, y_strength in enumerate(y_values):
            row_images = []
            for column, x_strength in enumerate(x_strengths):
                if progress is not None:
                    progress(len(outputs) / cells, desc=f"image {len(outputs) + 1} of {cells}")
                cell_blend = fixed + [(x_item[0], x_strength)] + ([(y_item[0], y_strength)] if y_item else [])
                output = self.run(parsed, cell_blend, options, folder, stem=f"cell_r{row}_c{column}")
                outputs.append(output)
                row_images.append(_open_image(output.files[0]))
            rows.append(row_images)
        x_name = x_item[0].name
        grid = labelled_grid(
            rows,
            [f"{x_name} {value:g}" for value in x_strengths],
            [f"{y_item[0].name} {value:g}" for value in y_values] if y_item else None,  # type: ignore[union-attr]
            title=f"seed {options.seed}",
        )
        grid_file = folder / "sweep_grid.png"
        grid.save(grid_file)
        metadata = {
            "seed": options.seed,
            "x": {"source": x_source, "name": x_name, "strengths": x_strengths},
            "y": {"source": y_source, "name": y_item[0].name, "strengths": y_values} if y_item else None,
            "cells": [output.metadata for output in outputs],
        }
        return SweepOutput(grid=grid_file, cells=outputs, metadata=metadata)

    # -- batch and portfolio ----------------------------------------------------------------

    @one_turn_per_call
    def batch(
        self,
        prompts: list[str],
        loras: list[dict] | None = None,
        options: Options = Options(),
        *,
        token: str | None = None,
        visitor: Visitor = LOCAL,
        progress=None,
    ) -> BatchOutput:
        """Several prompts with the same LoRA mix, zipped with the recipe of each image."""
        prompts = [prompt.strip() for prompt in prompts if prompt.strip()]
        if not prompts:
            raise PromptError("No prompts given; write one prompt per line.")
        if len(prompts) > MAX_BATCH_PROMPTS:
            raise LimitError(f"{len(prompts)} prompts given; use at most {MAX_BATCH_PROMPTS} per batch.")
        choices = loras_from_dicts(loras)
        check_work(self.settings.limits.work(options) * len(prompts), self.settings.limits, what=f"The batch of {len(prompts)} prompts")
        found: dict[str, ResolvedSource] = {}
        resolved = [self.resolve(prompt, choices, token=token, found=found, visitor=visitor) for prompt in prompts]  # all, before any GPU time
        folder = self.new_output_dir()
        outputs = []
        for index, (parsed, blend) in enumerate(resolved):
            if progress is not None:
                progress(index / len(prompts), desc=f"prompt {index + 1} of {len(prompts)}")
            outputs.append(self.run(parsed, blend, options, folder, stem=f"portfolio_{index + 1:02d}"))
        archive = folder / "portfolio.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            for output in outputs:
                for file in output.files:
                    bundle.write(file, file.name)
                    bundle.writestr(file.with_suffix(".json").name, json.dumps(output.metadata, indent=2))
        return BatchOutput(archive=archive, outputs=outputs)

    # -- recipes ----------------------------------------------------------------------------

    def save_recipe(self, metadata: dict) -> Path:
        """A blend recipe (sources, revisions, strengths, trigger words, seed) as a JSON file."""
        recipe = Recipe(
            prompt=metadata["prompt"],  # tags removed (the LoRAs are listed), trigger words kept
            negative_prompt=metadata.get("negative_prompt", ""),
            steps=metadata["steps"],
            guidance=metadata["guidance"],
            true_cfg=metadata.get("true_cfg", 1.0),
            seed=metadata["seed"],
            width=metadata["width"],
            height=metadata["height"],
            model=metadata["base_model"],
            loras=tuple(
                LoraRef(
                    lora["name"],
                    lora["strength"],
                    source=lora["source"],
                    revision=lora.get("revision", ""),
                    trigger_words=tuple(lora["trigger_words"]),
                    hash=lora.get("hash", ""),
                )
                for lora in metadata["loras"]
            ),
        )
        path = self.new_output_dir() / "recipe.json"
        path.write_text(recipe_to_json(recipe))
        return path

    def link_recipe(self, recipe: Recipe, *, visitor: Visitor = LOCAL) -> tuple[Recipe, list[str]]:
        """The recipe with LoRAs renamed since (or named otherwise by A1111/Forge) found by hash.

        Returns:
            the recipe, its LoRAs pointing at library names where a hash matched, and a note for each.
        """
        return blends.link_recipe(self, recipe, visitor=visitor)

    # -- bake ---------------------------------------------------------------------------------

    def bake(
        self,
        loras: list[dict] | None,
        *,
        prompt: str = "",
        rank: int = 0,
        name: str = "",
        target: str = "diffusers",
        visitor: Visitor = LOCAL,
        token: str | None = None,
        progress=None,
    ) -> blends.BakeResult:
        """Bake a blend (`[{"source", "strength"}]`, as `/generate` takes) into one LoRA.

        Args:
            loras: the blend's LoRAs and strengths (library names, paths, Hub ids).
            prompt: a prompt whose `<lora:NAME:STRENGTH>` tags join the blend, as in Generate.
            rank: 0 for exact (each module's rank is the sum of the parts' ranks); else the
                most rank a module keeps, by SVD, with the energy kept reported.
            name: its library name (default: the parts' names joined by '+').
            target: the layout of the file handed back (`diffusers`, `kohya`, `comfyui`); the
                library copy is diffusers.
            visitor: whose library it joins (API.md "Who owns what").
            token: the caller's Hub token, for Hub LoRAs.

        Returns:
            the file, its library name, rank, energy kept and the per-module report.

        Raises:
            LoraFileError: a LoRA that fits no module of the base, a bad name or rank.
            PromptError, LimitError: malformed `loras`, or more than the limit.
        """
        return blends.bake_blend(
            self,
            loras_from_dicts(loras),
            prompt=prompt,
            rank=rank,
            name=name,
            target=target,
            visitor=visitor,
            token=token,
            progress=progress,
        )


def _open_image(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")
