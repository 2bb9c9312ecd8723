"""What a generation asks for and gets back: `Options`, `GenerationRequest` and its limits, `GenerationResult`.

Plain data, with no torch: the UI builds `Options` from its widgets, the service resolves LoRAs into
`LoraSpec`s, and `Engine.generate` runs the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lora_space.core.errors import LimitError
from lora_space.core.settings import Limits

if TYPE_CHECKING:
    from PIL import Image

MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a request, already resolved to a local `.safetensors` file.

    `key` names the file's content (path + size + mtime, or repo + revision + file):
    two specs with the same key share one adapter.
    """

    key: str
    file: str
    name: str
    strength: float


@dataclass(frozen=True)
class Options:
    """How to generate, whatever the prompt and the LoRAs."""

    negative_prompt: str = ""
    seed: int = -1
    steps: int = 28
    guidance: float = 3.5
    true_cfg: float = 1.0
    width: int = 1024
    height: int = 1024
    num_images: int = 1


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    options: Options = Options()
    loras: tuple[LoraSpec, ...] = ()

    def check(self, limits: Limits) -> None:
        """Refuse a request outside the limits before any GPU time is asked for."""
        options = self.options
        if not 1 <= options.steps <= limits.max_steps:
            raise LimitError(f"steps={options.steps} is out of range; use 1 to {limits.max_steps}.")
        for label, value in (("width", options.width), ("height", options.height)):
            if not limits.min_size <= value <= limits.max_size or value % limits.size_multiple:
                raise LimitError(
                    f"{label}={value} is not allowed; use a multiple of {limits.size_multiple} "
                    f"from {limits.min_size} to {limits.max_size}."
                )
        if not 1 <= options.num_images <= limits.max_images:
            raise LimitError(f"num_images={options.num_images} is out of range; use 1 to {limits.max_images}.")
        if len(self.loras) > limits.max_loras:
            raise LimitError(f"{len(self.loras)} LoRAs asked for; use at most {limits.max_loras} at once.")
        if len(self.prompt) > limits.max_prompt_chars:
            raise LimitError(
                f"The prompt has {len(self.prompt)} characters; shorten it to {limits.max_prompt_chars} or fewer."
            )
        if not -1 <= options.seed <= MAX_SEED:
            raise LimitError(f"seed={options.seed} is out of range; use -1 (random) or 0 to {MAX_SEED}.")
        if len(options.negative_prompt) > limits.max_prompt_chars:
            raise LimitError(
                f"The negative prompt has {len(options.negative_prompt)} characters; shorten it to "
                f"{limits.max_prompt_chars} or fewer."
            )
        check_work(limits.work(options), limits, what="This request")


def check_work(work: float, limits: Limits, *, what: str) -> None:
    """Refuse a call whose GPU work (steps x images x megapixels x CFG passes) passes `limits.max_work`."""
    if work > limits.max_work:
        raise LimitError(
            f"{what} asks for {work:.0f} units of work (steps x images x megapixels, doubled by true CFG), "
            f"more than the {limits.max_work:.0f} one call may use; lower the steps, the size or the number of images."
        )


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seed: int
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    fused: bool = False
    compiled: bool = False  # the transformer ran compiled (`Engine(compile=...)`); False: eager
