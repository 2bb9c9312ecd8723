"""`/bake_lora`: a blend of LoRAs baked into one library LoRA (API.md), made with `gr.api`."""

from __future__ import annotations

import gradio as gr

from lora_space.service import LoraSpace
from lora_space.ui.caller import token_of, visitor_of
from lora_space.ui.errors import api_errors


def register_bake_endpoint(space: LoraSpace) -> None:
    """Register `/bake_lora` (call inside the demo's Blocks)."""

    @api_errors
    def bake_lora(
        loras: list[dict],
        rank: int = 0,
        name: str = "",
        target: str = "diffusers",
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request = None,
    ) -> dict:
        """Bake a blend into one LoRA that joins your library and travels to ComfyUI, Forge or the Hub.

        Args:
            loras: the blend, each {"source": library name, user/repo or user/repo/file.safetensors, "strength": 0.8}.
            rank: 0 for an exact bake (each module's rank is the sum of the parts' ranks); else the most
                rank a module keeps, by SVD of the summed update.
            name: its library name (default: the parts' names joined by '+').
            target: the layout of the returned file: "diffusers", "kohya" (A1111/Forge) or "comfyui";
                the library copy is diffusers.
        Returns:
            {"lora_file": file, "lora_name": usable as a source, "rank", "energy_kept" (1.0: exact),
            "exact", "target", "parts", "modules" (rank and energy kept per module), "warnings"}
        """
        result = space.bake(
            loras,
            rank=rank,
            name=name,
            target=target,
            visitor=visitor_of(space.settings, request),
            token=token_of(oauth_token),
        )
        return {"lora_file": gr.FileData(path=str(result.file))} | result.to_dict()

    gr.api(bake_lora, api_name="bake_lora")
