"""Images for a resolved blend: the checks and warnings before GPU time, and the PNGs with their recipes.

`LoraSpace.generate`, `.sweep` and `.batch` resolve the blend and call `Renderer.render` for each
image set. The metadata it returns is the `/generate` result (API.md); `recipe_from_metadata`
reads it back into a `Recipe` (Save recipe), next to the one function that writes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lora_space.core.errors import LimitError, PromptError
from lora_space.generate.prompts import (
    MAX_STRENGTH,
    MIN_STRENGTH,
    ParsedPrompt,
    build_model_prompt,
    parse_prompt,
)
from lora_space.generate.recipe import LoraRef, Recipe, save_png
from lora_space.generate.request import GenerationRequest, LoraSpec, Options
from lora_space.library.hashes import LORA_SHORT, MODEL_SHORT
from lora_space.library.sources import ResolvedSource, check_distinct, resolve_source
from lora_space.library.tools import compare_files
from lora_space.lora.conflicts import PairSummary, mix_warnings
from lora_space.visitors.owners import LOCAL, Visitor

if TYPE_CHECKING:
    from lora_space.core.settings import Settings
    from lora_space.generate.engine import Engine
    from lora_space.library.hashes import HashCache

# The course, per LoRA: "Optimal Range: Usually 0.6-1.0 for balanced results"; "Over-application:
# Values too high can cause artifacts or instability". A LoRA past this strength (either sign) is
# warned about; how LoRAs combine is the conflict analysis's judgement (`lora.conflicts`).
STRENGTH_WARNING = 1.2
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


def pair_at_unit_strength(name_a: str, file_a: str, key_a: str, name_b: str, file_b: str, key_b: str) -> PairSummary:
    """How two LoRA files relate at strength 1 each; `key_*` name the contents, for caching."""
    return compare_files({name_a: file_a, name_b: file_b}).pairs[0]


def conflict_warnings(blend: Blend, pair_summary: Callable[..., PairSummary] = pair_at_unit_strength) -> list[str]:
    """The course's "conflict resolution": LoRAs of the mix that fight or overshoot on shared layers."""
    active = [(item, strength) for item, strength in blend if strength != 0]
    names = [item.label for item, _ in active]
    # Two LoRAs may share a name (two files of one folder in two places): then each is called by its source.
    labels = [item.label if names.count(item.label) == 1 else item.source for item, _ in active]
    pairs = [
        pair_summary(labels[i], str(a.file), a.key, labels[j], str(b.file), b.key)
        for i, (a, _) in enumerate(active)
        for j, (b, _) in enumerate(active)
        if i < j
    ]
    return mix_warnings(pairs, {label: strength for label, (_, strength) in zip(labels, active)})


def strength_warnings(strengths: list[tuple[str, float]]) -> list[str]:
    """The course's over-application rule, per LoRA: one warning for each past `STRENGTH_WARNING`.

    Args:
        strengths: `(name, strength)` of each LoRA of the blend; a negative strength counts by its size.
    """
    warnings = []
    for name, strength in strengths:
        if abs(strength) > STRENGTH_WARNING:
            way = "" if strength > 0 else " (in reverse)"
            warnings.append(
                f"{name} is at strength {strength:g}{way}; past about {STRENGTH_WARNING:g} a LoRA often shows artifacts "
                f"or instability. The course's balanced range is 0.6-1.0: try {name} at {1.0 if strength > 0 else -1.0:g} or closer to 0."
            )
    return warnings


def resolve_blend(
    prompt: str,
    loras: list[tuple[str, float]],
    *,
    settings: Settings,
    token: str | None = None,
    swept: tuple[str, ...] = (),
    found: dict[str, ResolvedSource] | None = None,
    visitor: Visitor = LOCAL,
) -> tuple[ParsedPrompt, Blend]:
    """Parse the prompt and find every LoRA named by slots and tags, before any GPU time.

    `swept` LoRAs come last, at strength 0, replacing any slot or tag that names them.
    `found` remembers sources already resolved in this call (a batch resolves each once).

    Raises:
        LimitError: more LoRAs than `Limits.max_loras`.
        PromptError: a LoRA given twice, a malformed tag.
        LoraFileError, HubError: a source that cannot be found (`library.sources.resolve_source`).
    """
    found = {} if found is None else found
    limits = settings.limits
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
            found[source] = resolve_source(source, settings=settings, token=token, visitor=visitor, fits_base=True)
    check_distinct([found[source] for source, _ in choices])  # one file under two names is one LoRA
    return parsed, [(found[source], strength) for source, strength in choices]


@dataclass(frozen=True)
class Renderer:
    """What rendering needs: the engine, the settings, the file hashes and the pair analysis.

    Attributes:
        settings: limits and the base model's name.
        engine: the shared pipeline.
        hashes: A1111's file hashes for the recipes.
        pair_summary: how two LoRA files relate (cached by the caller).
    """

    settings: Settings
    engine: Engine
    hashes: HashCache
    pair_summary: Callable[..., PairSummary]

    def render(self, parsed: ParsedPrompt, blend: Blend, options: Options, folder: Path, *, progress=None, stem: str = "image") -> GenerateOutput:
        """Generate for a resolved blend on the engine and save each PNG with its recipe in `folder`."""
        # 1. The prompt as sent: tags removed, trigger words of every LoRA not at 0 inserted.
        model_prompt = build_model_prompt(parsed, [(item.trigger_words, strength) for item, strength in blend])
        request = GenerationRequest(
            prompt=model_prompt,
            options=options,
            loras=tuple(LoraSpec(item.key, str(item.file), item.label, strength) for item, strength in blend),  # messages name the repo
        )
        request.check(self.settings.limits)
        warnings = strength_warnings([(item.label, strength) for item, strength in blend]) + conflict_warnings(blend, self.pair_summary)
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
        recipe = Recipe(
            prompt=model_prompt,
            negative_prompt=options.negative_prompt,
            steps=options.steps,
            guidance=options.guidance,
            true_cfg=options.true_cfg,
            seed=result.seed,
            width=options.width,
            height=options.height,
            model=self.settings.base_model_label,
            loras=refs,
            model_hash=self.hashes.model_hash(base_file)[:MODEL_SHORT] if base_file.is_file() else "",  # a folder has none
        )
        files = [
            Path(save_png(image, folder / f"{stem}_{index:02d}_seed{result.seed + index}.png", replace(recipe, seed=result.seed + index)))
            for index, image in enumerate(result.images)
        ]
        metadata = recipe_metadata(recipe, parsed.raw, options.num_images) | {
            "fused": result.fused,
            "compiled": result.compiled,
            "warnings": warnings,
            "timings": {key: round(value, 4) for key, value in result.timings.items()},
        }
        return GenerateOutput(files=files, metadata=metadata, warnings=warnings)


# The `/generate` result names two of the recipe's fields otherwise (API.md); every other key is the recipe's own.
_METADATA_KEYS = {"model": "base_model"}
_METADATA_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "true_cfg", "width", "height", "model", "loras")
_METADATA_LORA = ("name", "source", "strength", "trigger_words")  # and `revision`, `hash` when set


def recipe_metadata(recipe: Recipe, prompt_raw: str, num_images: int) -> dict:
    """The recipe part of the `/generate` result (API.md), from `Recipe.to_dict`; `recipe_from_metadata` reads it back."""
    data = recipe.to_dict()
    data["loras"] = [
        {key: lora[key] for key in _METADATA_LORA} | {key: lora[key] for key in ("revision", "hash") if lora[key]}
        for lora in data["loras"]
    ]
    values = {_METADATA_KEYS.get(key, key): data[key] for key in _METADATA_FIELDS}
    return values | {"prompt_raw": prompt_raw, "num_images": num_images}


def recipe_from_metadata(metadata: dict) -> Recipe:
    """A `/generate` result's recipe (sources, revisions, strengths, trigger words, seed) as a `Recipe`,
    checked as `Recipe.from_dict` checks a recipe file.

    Raises:
        PromptError: a key of the wrong type, or one the result never has.
    """
    names = {value: key for key, value in _METADATA_KEYS.items()}
    return Recipe.from_dict({names.get(key, key): metadata[key] for key in metadata if names.get(key, key) in _METADATA_FIELDS})


def open_image(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")
