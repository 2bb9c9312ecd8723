"""What the UI and the API call: one `LoraSpace` per process, holding settings and engine.

Handlers stay thin: they turn widget values into these calls. Nothing here imports gradio.
"""

from __future__ import annotations

import functools
import json
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from lora_space.core.errors import DatasetError, LimitError, LoraFileError, PromptError
from lora_space.core.settings import Settings
from lora_space.discover.finder import Discover
from lora_space.generate.base_model import load_base_pipeline
from lora_space.generate.blends import BakeResult, Blends
from lora_space.generate.compiled import CompileOptions
from lora_space.generate.engine import Engine
from lora_space.generate.grid import labelled_grid
from lora_space.generate.prompts import ParsedPrompt
from lora_space.generate.recipe import Recipe, recipe_to_json
from lora_space.generate.render import (
    MAX_BATCH_PROMPTS,
    MAX_SWEEP_CELLS,
    BatchOutput,
    Blend,
    GenerateOutput,
    Renderer,
    SweepOutput,
    check_strength,
    loras_from_dicts,
    open_image,
    pair_at_unit_strength,
    recipe_from_metadata,
    resolve_blend,
)
from lora_space.generate.request import MAX_SEED, Options, check_work
from lora_space.library import store as library
from lora_space.library.hashes import HashCache
from lora_space.library.inspect import inspect_source
from lora_space.library.sources import ResolvedSource, resolve_source
from lora_space.library.tools import (
    ConvertResult,
    compare_sources,
    convert_source,
    optimize_source,
)
from lora_space.lora.conflicts import ConflictReport
from lora_space.lora.inspect import InspectReport
from lora_space.lora.optimize import OptimizeReport
from lora_space.publish.publish import (
    PublishRequest,
    PublishResult,
    preview_card,
    publish,
    user_token,
)
from lora_space.train import intake
from lora_space.train.autocaption import autocaption
from lora_space.train.config import merged
from lora_space.train.dataset import IngestedDataset
from lora_space.train.jobs import JobManager
from lora_space.train.status import JobStatus
from lora_space.visitors.cleanup import check_quota
from lora_space.visitors.disk import check_write, output_folder, record_write
from lora_space.visitors.fairness import VisitorGate, one_turn_per_call
from lora_space.visitors.owners import LOCAL, Visitor, visitor_lora_dir


class LoraSpace:
    """The app's operations on one base model."""

    def __init__(self, settings: Settings, engine: Engine, **job_options) -> None:
        """The rooms of one base model on `engine`; `job_options` go to `JobManager` (`chunk_steps`, ...)."""
        self.settings = settings
        self.engine = engine
        # How two LoRA files relate, computed once per pair of file contents.
        self._pair_summary = functools.lru_cache(maxsize=128)(pair_at_unit_strength)
        # Calls running per visitor, bounded by `settings.limits.max_requests_per_visitor`.
        self.gate = VisitorGate()
        # Training jobs (lora_space/train/jobs.py): queued, trained chunk by chunk on this engine.
        self.jobs = JobManager(settings, engine, add_lora=self.add_lora, **job_options)
        # A1111's file hashes (`Lora hashes`, `Model hash`), computed once per file, kept on disk.
        self.hashes = HashCache(settings.data_dir / "cache" / "file_hashes.json")
        # Baking blends and linking recipes by hash.
        self.blends = Blends(settings, self.hashes, self.add_lora)
        # Images for resolved blends, saved with their recipes.
        self.renderer = Renderer(settings, engine, self.hashes, self._pair_summary)
        # Hub search and evaluation for the Discover tab, with its short-lived search cache.
        self.discover = Discover(settings)

    @contextmanager
    def output_dir(self) -> Iterator[Path]:
        """A fresh folder for one call's files, named so that only its caller can find it, within
        the disk bounds (`disk.output_folder`: checked before, what was written counted after)."""
        with output_folder(self.settings) as folder:
            yield folder

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
        check_write(self.settings, size)  # and the disk bounds no visitor identity resets
        folder = visitor_lora_dir(self.settings, visitor)
        entry = library.add_to_library(folder, path, name=name, overwrite=overwrite)
        record_write(self.settings, size)
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
        """The prompt parsed and every LoRA of slots and tags found, before any GPU time (`render.resolve_blend`)."""
        return resolve_blend(prompt, loras, settings=self.settings, token=token, swept=swept, found=found, visitor=visitor)

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
        with self.output_dir() as folder:
            return self.run(parsed, blend, options, folder, progress=progress)

    def run(self, parsed: ParsedPrompt, blend: Blend, options: Options, folder: Path, *, progress=None, stem: str = "image") -> GenerateOutput:
        """Generate for a resolved blend and save each PNG with its recipe in `folder` (`Renderer.render`)."""
        return self.renderer.render(parsed, blend, options, folder, progress=progress, stem=stem)

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
        with self.output_dir() as folder:
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
                    row_images.append(open_image(output.files[0]))
                rows.append(row_images)
            grid_file = folder / "sweep_grid.png"
            labelled_grid(  # each label: the LoRA (a Hub one by its repo), then its strength in full
                rows,
                [f"{x_item[0].label}\nstrength {value:g}" for value in x_strengths],
                [f"{y_item[0].label}\nstrength {value:g}" for value in y_values] if y_item else None,  # type: ignore[union-attr]
                title=f"seed {options.seed}",
            ).save(grid_file)
            metadata = {
                "seed": options.seed,
                "x": {"source": x_source, "name": x_item[0].name, "strengths": x_strengths},
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
        with self.output_dir() as folder:
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
        with self.output_dir() as folder:
            (path := folder / "recipe.json").write_text(recipe_to_json(recipe_from_metadata(metadata)))
        return path

    def link_recipe(self, recipe: Recipe, *, visitor: Visitor = LOCAL) -> tuple[Recipe, list[str]]:
        """The recipe with LoRAs renamed since (or named otherwise by A1111/Forge) found by hash.

        Returns:
            the recipe, its LoRAs pointing at library names where a hash matched, and a note for each.
        """
        return self.blends.link_recipe(recipe, visitor=visitor)

    def fetch(self, source: str, *, visitor: Visitor = LOCAL, token: str | None = None) -> ResolvedSource:
        """The LoRA a source names, downloaded once if it is on the Hub and refused unread if it fits not this base."""
        return resolve_source(source, settings=self.settings, token=token, visitor=visitor, fits_base=True)

    def inspect(self, source: str, *, visitor: Visitor = LOCAL, token: str | None = None) -> InspectReport:
        """`/inspect_lora`'s report for a library name, a path or a Hub file (`library.inspect`)."""
        return inspect_source(source, settings=self.settings, token=token, visitor=visitor)

    # -- publish -------------------------------------------------------------------------------

    def preview_card(self, request: PublishRequest, *, visitor: Visitor = LOCAL) -> str:
        """The card a publish would send; nothing is sent (`publish.preview_card`)."""
        return preview_card(self, request, visitor=visitor)

    def publish(self, request: PublishRequest, *, token: str | None, typed_token: str | None = None, visitor: Visitor = LOCAL,
                oauth_scope: str = "", progress=None) -> PublishResult:  # fmt: skip
        """Push one LoRA with its card under the visitor's own login (`publish.publish`; locally a typed or `HF_TOKEN` token)."""
        user = user_token(token, typed_token, on_space=self.settings.on_space, environment_token=self.settings.hf_token)
        return publish(self, request, token=user, visitor=visitor, oauth_scope=oauth_scope, progress=progress)

    # -- LoRA tools: one turn per call, their work bounded from the headers (`lora.tools`) ------

    @one_turn_per_call
    def convert(self, source: str, target: str = "kohya", *, visitor: Visitor = LOCAL, token: str | None = None) -> ConvertResult:
        """Write a LoRA in another layout (`lora.tools.convert_source`)."""
        return convert_source(source, target, settings=self.settings, token=token, visitor=visitor)

    @one_turn_per_call
    def resize(self, source: str, *, visitor: Visitor = LOCAL, token: str | None = None, **options) -> tuple[Path, OptimizeReport]:
        """Resize, change dtype, prune (`lora.tools.optimize_source`; `options` are its keywords)."""
        return optimize_source(source, settings=self.settings, token=token, visitor=visitor, **options)

    @one_turn_per_call
    def compare(
        self, sources: list[str], strengths: list[float] | None = None, *, visitor: Visitor = LOCAL, token: str | None = None
    ) -> ConflictReport:
        """Which LoRAs of a mix compete (`lora.tools.compare_sources`)."""
        return compare_sources(sources, settings=self.settings, token=token, visitor=visitor, strengths=strengths)

    # -- training datasets: read once, within the visitor's quota (`train.intake`) ------------

    @one_turn_per_call
    def preview_dataset(self, zip_path: Path | str, *, visitor: Visitor = LOCAL) -> tuple[str, IngestedDataset]:
        """Read a dataset zip into `visitor`'s preview; returns its id and the dataset the report shows."""
        return intake.read_preview(self.settings, zip_path, visitor=visitor)

    @one_turn_per_call
    def start_training(
        self, dataset: Path | str | None, config: dict | None = None, *, visitor: Visitor = LOCAL, preview: str = "", captions: dict | None = None
    ) -> JobStatus:
        """Queue a training job from `visitor`'s preview `preview`, else from the zip `dataset` (read once).

        Raises:
            DatasetError, TrainConfigError, JobError, LimitError: see `JobManager.start`, `train.intake`.
        """
        merged(None, config, is_tiny=self.settings.is_tiny)  # a bad setting is named before the zip is read
        self.jobs.check_room(visitor)  # and a second job, or one past the Space's jobs
        folder = intake.preview_folder(self.settings, visitor, preview)
        made = folder is None
        if made:
            if not dataset:
                raise DatasetError("Upload a dataset zip first (images plus captions), then press Start.")
            folder = intake.preview_folder(self.settings, visitor, intake.read_preview(self.settings, dataset, visitor=visitor)[0])
        try:
            return self.jobs.start(folder, config or {}, visitor=visitor, captions=captions)
        except BaseException:
            if made:  # a preview read for this call only
                shutil.rmtree(folder, ignore_errors=True)  # type: ignore[arg-type]
            raise

    def captions(self, preview: str, *, visitor: Visitor = LOCAL, keep: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
        """`visitor`'s preview's captions as edited and as the zip had them; `keep` saves edited ones first."""
        if keep is not None:
            intake.keep_captions(self.settings, visitor, preview, keep)
        return intake.captions_of(self.settings, visitor, preview)

    @one_turn_per_call
    def autocaption(self, preview: str, trigger_word: str = "", *, visitor: Visitor = LOCAL, progress=None) -> dict[str, str]:
        """Caption every image of `visitor`'s preview with a vision-language model; the captions are kept with it.

        Raises:
            LimitError: more images than `Limits.max_caption_images`.
            DatasetError: the preview is gone, or the model cannot be loaded.
        """
        images = intake.preview_images(self.settings, visitor, preview)
        limit = self.settings.limits.max_caption_images
        if len(images) > limit:
            raise LimitError(f"The dataset has {len(images)} images; auto-captioning writes at most {limit} per call. Caption them in the zip instead.")
        made = autocaption(images, trigger_word=trigger_word, endpoint=self.settings.hf_endpoint, offline=self.settings.hf_offline, progress=progress)
        captions = self.captions(preview, visitor=visitor)[0] | made
        self.captions(preview, visitor=visitor, keep=captions)
        return captions

    # -- bake ---------------------------------------------------------------------------------

    @one_turn_per_call
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
    ) -> BakeResult:
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
        taken = {item["name"].casefold() for item in self.list_loras(visitor)}
        name = Blends.check_request(target, name, taken)  # before any file is read
        _, blend = self.resolve(prompt, loras_from_dicts(loras), token=token, visitor=visitor)  # slots and the prompt's tags
        return self.blends.bake(
            blend, taken=taken, rank=rank, name=name, target=target, visitor=visitor, token=token, progress=progress
        )


def create_space(settings: Settings) -> LoraSpace:
    """Load the base model and wrap it; raises `LoraSpaceError` with a clear message."""
    pipe = load_base_pipeline(settings)  # a gated base model is read with HF_TOKEN, the Space's own
    compile = CompileOptions(slots=settings.compile_slots, rank=settings.compile_rank) if settings.compile else None
    engine = Engine(
        pipe, cache_size=settings.adapter_cache_size, fuse_memory_bytes=settings.fuse_memory_mb * 2**20, compile=compile
    )
    return LoraSpace(settings, engine)
