"""The typed public endpoints of API.md, made with `gr.api`.

Each endpoint is a small typed function whose docstring becomes its API documentation;
errors reach the caller as `gr.Error` (an `AppError` in gradio_client) through `user_errors`.
"""

from __future__ import annotations

import gradio as gr

from ..lora.inspect import inspect_source
from ..service import LoraSpace, Options
from .errors import api_errors
from .visitors import token_of, visitor_of


def _file(path) -> gr.FileData:
    return gr.FileData(path=str(path))


def register_endpoints(space: LoraSpace) -> None:
    """Register the public endpoints (call inside the demo's Blocks)."""

    def who(request: gr.Request | None):
        return visitor_of(space.settings, request)

    @api_errors
    def list_loras(request: gr.Request) -> list[dict]:
        """The local LoRA library: name, location, size_bytes, format, trigger_words, owner of each file."""
        return space.list_loras(who(request))

    @api_errors
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
        options = Options(negative_prompt, seed, steps, guidance, true_cfg, width, height, num_images)
        output = space.generate(prompt, loras, options, token=token_of(oauth_token), visitor=who(request))
        return {"images": [_file(file) for file in output.files], "metadata": output.metadata}

    @api_errors
    def strength_sweep(
        prompt: str,
        x_source: str,
        x_strengths: list[float],
        y_source: str = "",
        y_strengths: list[float] | None = None,
        loras: list[dict] | None = None,
        negative_prompt: str = "",
        seed: int = -1,
        steps: int = 28,
        guidance: float = 3.5,
        width: int = 1024,
        height: int = 1024,
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
        options = Options(negative_prompt, seed, steps, guidance, 1.0, width, height, 1)
        token = token_of(oauth_token)
        output = space.sweep(
            prompt, loras, x_source, list(x_strengths), y_source, y_strengths, options, token=token, visitor=who(request)
        )
        images = [_file(file) for cell in output.cells for file in cell.files]
        return {"grid": _file(output.grid), "images": images, "metadata": output.metadata}

    @api_errors
    def batch_generate(
        prompts: list[str],
        loras: list[dict] | None = None,
        negative_prompt: str = "",
        seed: int = -1,
        steps: int = 28,
        guidance: float = 3.5,
        width: int = 1024,
        height: int = 1024,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request = None,
    ) -> dict:
        """Several prompts with one LoRA mix (the course's portfolio); a zip with each image's recipe.

        Returns:
            {"zip": file, "images": [files], "metadata": [one per prompt]}
        """
        options = Options(negative_prompt, seed, steps, guidance, 1.0, width, height, 1)
        output = space.batch(prompts, loras, options, token=token_of(oauth_token), visitor=who(request))
        images = [_file(file) for result in output.outputs for file in result.files]
        return {"zip": _file(output.archive), "images": images, "metadata": [result.metadata for result in output.outputs]}

    @api_errors
    def inspect_lora(source: str, oauth_token: gr.OAuthToken | None = None, request: gr.Request = None) -> dict:
        """Judge a LoRA before loading it, from its file header alone (Hub files by range requests).

        Args:
            source: a library name, a local path, user/repo, or user/repo/file.safetensors.
        Returns:
            format, rank, ranks, alpha, num_tensors, target_modules, size_bytes, dtype, compatible,
            coverage, base_model_guess, trigger_words, training_info, warnings, and more.
        """
        token = token_of(oauth_token)
        return inspect_source(source, settings=space.settings, token=token, visitor=who(request)).to_dict()

    @api_errors
    def convert_lora(
        source: str, target: str = "kohya", oauth_token: gr.OAuthToken | None = None, request: gr.Request = None
    ) -> dict:
        """Write a LoRA for diffusers, kohya (A1111/Forge) or ComfyUI; every weight is kept bit for bit.

        Args:
            source: a library name, a local path, user/repo, or user/repo/file.safetensors.
            target: "diffusers", "kohya" or "comfyui".
        Returns:
            {"file": the converted .safetensors, "source_format", "target", "num_modules", "warnings"}
        """
        result = space.convert(source, target, token=token_of(oauth_token), visitor=who(request))
        return {
            "file": _file(result.file),
            "source_format": result.source_format,
            "target": result.target,
            "num_modules": result.num_modules,
            "warnings": result.warnings,
        }

    @api_errors
    def resize_lora(
        source: str,
        rank: int = 0,
        energy: float = 0.0,
        dtype: str = "keep",
        prune_below: float = 0.0,
        target: str = "diffusers",
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request = None,
    ) -> dict:
        """Shrink a LoRA: lower its rank by SVD of each B @ A, change dtype, drop quiet modules.

        Args:
            source: a library name, a local path, user/repo, or user/repo/file.safetensors.
            rank: the rank cap (0: none).
            energy: the share of the update's energy to keep, 0..1 (0: off).
            dtype: "keep", "bf16", "fp16" or "fp32".
            prune_below: drop modules whose update norm is below this share of the largest (0: keep all).
            target: the layout to write: "diffusers", "kohya" or "comfyui".
        Returns:
            {"file": the new .safetensors, "report": energy kept overall and per module, pruned modules, sizes}
        """
        path, report = space.resize(
            source,
            token=token_of(oauth_token),
            visitor=who(request),
            rank=rank or None,
            energy=energy or None,
            dtype=dtype,
            prune_below=prune_below,
            target=target,
        )
        return {"file": _file(path), "report": report.to_dict()}

    @api_errors
    def compare_loras(
        sources: list[str],
        strengths: list[float] | None = None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request = None,
    ) -> dict:
        """Which LoRAs of a mix compete: per pair and per block, shared modules and the cosine of their updates.

        Args:
            sources: 2 to 6 LoRAs (library names, paths or Hub ids).
            strengths: their strengths in the mix, in the same order (default 1.0 each).
        Returns:
            {"pairs": [...], "blocks": [...], "modules": [...], "warnings": [...]}
        """
        return space.compare(sources, strengths, token=token_of(oauth_token), visitor=who(request)).to_dict()

    gr.api(list_loras, api_name="list_loras")
    gr.api(inspect_lora, api_name="inspect_lora")
    gr.api(convert_lora, api_name="convert_lora")
    gr.api(resize_lora, api_name="resize_lora")
    gr.api(compare_loras, api_name="compare_loras")
    gr.api(generate, api_name="generate")
    gr.api(strength_sweep, api_name="strength_sweep")
    gr.api(batch_generate, api_name="batch_generate")
