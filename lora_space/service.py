"""What the UI and the API call: one `LoraSpace` per process, holding settings and engine.

Handlers stay thin: they turn widget values into these calls. Nothing here imports gradio.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import library
from .engine import Engine, GenerationRequest, LoraSpec
from .errors import LimitError, PromptError
from .prompts import build_model_prompt, parse_prompt
from .recipe import LoraRef, Recipe, save_png
from .settings import Settings
from .sources import ResolvedSource, resolve_source

logger = logging.getLogger(__name__)

# The course: "Usually 0.6-1.0 for balanced results"; "values too high can cause artifacts".
STRENGTH_SUM_WARNING = 1.5


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA as a caller asks for it: a source and a strength."""

    source: str
    strength: float = 1.0


@dataclass
class GenerateOutput:
    files: list[Path]
    metadata: dict
    warnings: list[str] = field(default_factory=list)


def _choices_from_dicts(loras: list[dict] | None) -> list[LoraChoice]:
    choices = []
    for index, item in enumerate(loras or []):
        if not isinstance(item, dict) or not isinstance(item.get("source"), str):
            raise PromptError(
                f"loras[{index}] = {item!r} is not of the form {{'source': 'name or user/repo', 'strength': 0.8}}."
            )
        strength = item.get("strength", 1.0)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise PromptError(f"loras[{index}]: strength {strength!r} is not a number; use e.g. 0.8.")
        if not -2 <= strength <= 3:
            raise PromptError(f"loras[{index}]: strength {strength} is outside -2..3; the course's range is 0.6-1.0.")
        choices.append(LoraChoice(item["source"].strip(), float(strength)))
    return choices


class LoraSpace:
    """The app's operations on one base model."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine

    @property
    def outputs_dir(self) -> Path:
        return self.settings.data_dir / "outputs"

    def new_output_dir(self) -> Path:
        """A fresh folder for one call's files: served only to that caller."""
        folder = self.outputs_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    # -- library ------------------------------------------------------------------------

    def list_loras(self) -> list[dict]:
        return [entry.to_dict() for entry in library.scan_library(self.settings.lora_dir)]

    # -- generate -----------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        loras: list[dict] | None = None,
        *,
        negative_prompt: str = "",
        seed: int = -1,
        steps: int = 28,
        guidance: float = 3.5,
        true_cfg: float = 1.0,
        width: int = 1024,
        height: int = 1024,
        num_images: int = 1,
        token: str | None = None,
        progress=None,
    ) -> GenerateOutput:
        """Generate images with a blend of LoRAs from slots (`loras`) and `<lora:...>` tags."""
        limits = self.settings.limits
        # 1. Parse the prompt; tags and slots together name the LoRAs.
        parsed = parse_prompt(prompt, max_chars=limits.max_prompt_chars)
        choices = _choices_from_dicts(loras) + [LoraChoice(tag.name, tag.strength) for tag in parsed.tags]
        if len(choices) > limits.max_loras:
            raise LimitError(f"{len(choices)} LoRAs asked for; use at most {limits.max_loras} at once.")
        sources = [choice.source for choice in choices]
        for source in set(sources):
            if sources.count(source) > 1:
                raise PromptError(f"LoRA {source!r} is given twice (in a slot and a tag?); give it once.")
        # 2. Find every LoRA (library, data folder or Hub) before any GPU time is spent.
        resolved: list[tuple[ResolvedSource, float]] = [
            (resolve_source(choice.source, settings=self.settings, token=token), choice.strength) for choice in choices
        ]
        model_prompt = build_model_prompt(parsed, [(item.trigger_words, strength) for item, strength in resolved])
        request = GenerationRequest(
            prompt=model_prompt,
            negative_prompt=negative_prompt,
            seed=seed,
            steps=steps,
            guidance=guidance,
            true_cfg=true_cfg,
            width=width,
            height=height,
            num_images=num_images,
            loras=tuple(LoraSpec(item.key, str(item.file), item.name, strength) for item, strength in resolved),
        )
        request.check(limits)
        warnings = self.strength_warnings([strength for _, strength in resolved])
        # 3. Run it on the shared engine.
        result = self.engine.generate(request, progress=progress)
        warnings += result.warnings
        # 4. Save each image with its recipe (seed + index) in a folder of its own.
        lora_meta = [
            {"name": item.name, "source": item.source, "strength": strength, "trigger_words": list(item.trigger_words)}
            | ({"revision": item.revision} if item.revision else {})
            for item, strength in resolved
        ]
        folder = self.new_output_dir()
        files = []
        for index, image in enumerate(result.images):
            recipe = Recipe(
                prompt=model_prompt,
                negative_prompt=negative_prompt,
                steps=steps,
                guidance=guidance,
                true_cfg=true_cfg,
                seed=result.seed + index,
                width=width,
                height=height,
                model=self.settings.base_model,
                loras=tuple(
                    LoraRef(item.name, strength, source=item.source, revision=item.revision or "", trigger_words=tuple(item.trigger_words))
                    for item, strength in resolved
                ),
            )
            files.append(save_png(image, folder / f"image_{index:02d}_seed{result.seed + index}.png", recipe))
        metadata = {
            "prompt": model_prompt,
            "prompt_raw": prompt,
            "negative_prompt": negative_prompt,
            "seed": result.seed,
            "steps": steps,
            "guidance": guidance,
            "true_cfg": true_cfg,
            "width": width,
            "height": height,
            "base_model": self.settings.base_model,
            "loras": lora_meta,
            "fused": result.fused,
            "warnings": warnings,
            "timings": {key: round(value, 4) for key, value in result.timings.items()},
        }
        return GenerateOutput(files=[Path(file) for file in files], metadata=metadata, warnings=warnings)

    @staticmethod
    def strength_warnings(strengths: list[float]) -> list[str]:
        """The course: 0.6-1.0 is balanced; too high causes artifacts. Warn on a heavy blend."""
        total = sum(abs(strength) for strength in strengths)
        if total > STRENGTH_SUM_WARNING:
            return [
                f"The LoRA strengths add up to {total:.2f}; past about {STRENGTH_SUM_WARNING} blends often show "
                "artifacts. Lower the strongest LoRA first (the course's range is 0.6-1.0 each)."
            ]
        return []
