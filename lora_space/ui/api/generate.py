"""Generate's endpoints of API.md (`/generate`, `/strength_sweep`, `/batch_generate`), made with `gr.api`.

Each endpoint is a small typed function whose docstring becomes its API documentation;
errors reach the caller as `gr.Error` (an `AppError` in gradio_client) through `api_errors`.
"""

from __future__ import annotations

import gradio as gr

from lora_space.service import LoraSpace, Options
from lora_space.ui.caller import token_of, visitor_of
from lora_space.ui.errors import api_errors

DEFAULT = Options()
"""The endpoints' defaults are `Options`' own."""


def file_data(path) -> gr.FileData:
    return gr.FileData(path=str(path))


def register_endpoints(space: LoraSpace) -> None:
    """Register Generate's endpoints (call inside the demo's Blocks)."""

    def who(request: gr.Request | None):
        return visitor_of(space.settings, request)

    @api_errors
    def generate(
        prompt: str,
        loras: list[dict] | None = None,
        negative_prompt: str = DEFAULT.negative_prompt,
        seed: int = DEFAULT.seed,
        steps: int = DEFAULT.steps,
        guidance: float = DEFAULT.guidance,
        width: int = DEFAULT.width,
        height: int = DEFAULT.height,
        num_images: int = DEFAULT.num_images,
        true_cfg: float = DEFAULT.true_cfg,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request = None,
    ) -> dict:
        """Generate images with a blend of LoRAs.

        Args:
            prompt: the prompt; may hold `<lora:NAME:STRENGTH>` tags.
            loras: LoRAs to blend, each {"source": library name, user/repo or user/repo/file.safetensors, "strength": 0.8}.
            negative_prompt: what to avoid; used with true CFG when true_cfg > 1.
            seed: -1 for a random seed; image i uses seed + i.
            steps: denoising steps (1..100).
            guidance: FLUX's distilled guidance scale.
            width: image width, a multiple of 16 from 64 to 2048.
            height: image height, a multiple of 16 from 64 to 2048.
            num_images: 1..8 images.
            true_cfg: true classifier-free guidance scale for the negative prompt (1 = off).
        Returns:
            {"images": [files], "metadata": {...}}: PNGs carrying their recipe, and the recipe as JSON.
        """
        options = Options(negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance, true_cfg=true_cfg,
                          width=width, height=height, num_images=num_images)  # fmt: skip
        output = space.generate(prompt, loras, options, token=token_of(oauth_token), visitor=who(request))
        return {"images": [file_data(file) for file in output.files], "metadata": output.metadata}

    @api_errors
    def strength_sweep(
        prompt: str,
        x_source: str,
        x_strengths: list[float],
        y_source: str = "",
        y_strengths: list[float] | None = None,
        loras: list[dict] | None = None,
        negative_prompt: str = DEFAULT.negative_prompt,
        seed: int = DEFAULT.seed,
        steps: int = DEFAULT.steps,
        guidance: float = DEFAULT.guidance,
        width: int = DEFAULT.width,
        height: int = DEFAULT.height,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request = None,
    ) -> dict:
        """One seed at several strengths of one LoRA (X), or of two (X/Y), as one labelled grid.

        Args:
            prompt: the prompt; may hold `<lora:...>` tags for LoRAs that stay fixed.
            x_source: the LoRA to sweep.
            x_strengths: its strengths, e.g. [0, 0.4, 0.8, 1.2].
            y_source: an optional second LoRA for an X/Y grid.
            y_strengths: its strengths.
            loras: LoRAs that stay fixed, as in /generate.
        Returns:
            {"grid": file, "images": [files, row by row], "metadata": {...}}
        """
        options = Options(negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance, width=width, height=height)
        token = token_of(oauth_token)
        output = space.sweep(
            prompt, loras, x_source, list(x_strengths), y_source, y_strengths, options, token=token, visitor=who(request)
        )
        images = [file_data(file) for cell in output.cells for file in cell.files]
        return {"grid": file_data(output.grid), "images": images, "metadata": output.metadata}

    @api_errors
    def batch_generate(
        prompts: list[str],
        loras: list[dict] | None = None,
        negative_prompt: str = DEFAULT.negative_prompt,
        seed: int = DEFAULT.seed,
        steps: int = DEFAULT.steps,
        guidance: float = DEFAULT.guidance,
        width: int = DEFAULT.width,
        height: int = DEFAULT.height,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request = None,
    ) -> dict:
        """Several prompts with one LoRA mix (the course's portfolio); a zip with each image's recipe.

        Returns:
            {"zip": file, "images": [files], "metadata": [one per prompt]}
        """
        options = Options(negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance, width=width, height=height)
        output = space.batch(prompts, loras, options, token=token_of(oauth_token), visitor=who(request))
        images = [file_data(file) for result in output.outputs for file in result.files]
        return {"zip": file_data(output.archive), "images": images, "metadata": [result.metadata for result in output.outputs]}

    gr.api(generate, api_name="generate")
    gr.api(strength_sweep, api_name="strength_sweep")
    gr.api(batch_generate, api_name="batch_generate")
