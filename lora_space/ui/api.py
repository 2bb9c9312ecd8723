"""The typed public endpoints of API.md, made with `gr.api`.

Each endpoint is a small typed function whose docstring becomes its API documentation;
errors reach the caller as `gr.Error` (an `AppError` in gradio_client) through `user_errors`.
"""

from __future__ import annotations

import gradio as gr

from ..service import LoraSpace
from .errors import user_errors


def register_endpoints(space: LoraSpace) -> None:
    """Register `/list_loras` and `/generate` (call inside the demo's Blocks)."""

    @user_errors
    def list_loras() -> list[dict]:
        """The local LoRA library: name, location, size_bytes, format, trigger_words of each file."""
        return space.list_loras()

    @user_errors
    def generate(
        prompt: str,
        loras: list[dict] | None = None,
        negative_prompt: str = "",
        seed: int = -1,
        steps: int = 28,
        guidance: float = 3.5,
        width: int = 1024,
        height: int = 1024,
        num_images: int = 1,
        true_cfg: float = 1.0,
        oauth_token: gr.OAuthToken | None = None,
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
        output = space.generate(
            prompt,
            loras,
            negative_prompt=negative_prompt,
            seed=seed,
            steps=steps,
            guidance=guidance,
            true_cfg=true_cfg,
            width=width,
            height=height,
            num_images=num_images,
            token=oauth_token.token if oauth_token else None,
        )
        return {"images": [gr.FileData(path=str(file)) for file in output.files], "metadata": output.metadata}

    gr.api(list_loras, api_name="list_loras")
    gr.api(generate, api_name="generate")
