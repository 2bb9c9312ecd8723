"""The library and LoRA tools' endpoints of API.md (`/list_loras`, `/inspect_lora`, `/convert_lora`,
`/resize_lora`, `/compare_loras`), made with `gr.api`."""

from __future__ import annotations

import gradio as gr

from lora_space.service import LoraSpace
from lora_space.ui.api.generate import file_data
from lora_space.ui.caller import token_of, visitor_of
from lora_space.ui.errors import api_errors


def register_lora_tool_endpoints(space: LoraSpace) -> None:
    """Register the library's and the LoRA tools' endpoints (call inside the demo's Blocks)."""

    def who(request: gr.Request | None):
        return visitor_of(space.settings, request)

    @api_errors
    def list_loras(request: gr.Request) -> list[dict]:
        """The local LoRA library: name, location, size_bytes, format, trigger_words, owner of each file."""
        return space.list_loras(who(request))

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
        return space.inspect(source, token=token, visitor=who(request)).to_dict()

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
            "file": file_data(result.file),
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
        return {"file": file_data(path), "report": report.to_dict()}

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
