"""The "LoRA tools" panel: it builds, its handlers work, bad files get messages and it keeps serving."""

from __future__ import annotations

import gradio as gr
import pytest
import torch
from safetensors.torch import save_file

from lora_space.lora.export import save_lora
from lora_space.lora.safefile import load_lora_file
from lora_space.lora.shapes import tiny_shapes
from lora_space.lora.synthetic import random_lora
from lora_space.service import LoraSpace
from lora_space.ui.caller import build_browser_id
from lora_space.ui.tabs.lora_tools import (
    build_lora_tools,
    compare_handler,
    convert_handler,
    energy_frame,
    inspect_handler,
    parse_sources,
    resize_handler,
)


@pytest.fixture
def library(settings):
    """Two tiny LoRAs in the library (one kohya) and a broken file beside them."""
    settings.lora_dir.mkdir(parents=True, exist_ok=True)
    shapes = tiny_shapes().modules
    save_lora(random_lora(shapes, rank=4, alpha=8.0, seed=1), settings.lora_dir / "style.safetensors")
    save_lora(random_lora(shapes, rank=4, alpha=8.0, seed=2), settings.lora_dir / "faces.safetensors", target="kohya")
    save_file({"a.lora_A.weight": torch.full((1, 2), float("nan")), "a.lora_B.weight": torch.ones(2, 1)}, str(settings.lora_dir / "broken.safetensors"))
    return settings


def test_panel_builds_and_leaves_the_api_to_the_typed_endpoints(settings) -> None:
    with gr.Blocks() as demo:
        build_lora_tools(LoraSpace(settings, engine=None), build_browser_id(settings, demo))
    visibility = [dependency.api_visibility for dependency in demo.fns.values()]
    assert visibility == ["private"] * 5  # the page's load event and the panel's four; /convert_lora and friends are typed gr.api endpoints (ui/api.py)


def test_inspect_and_convert_handlers(library) -> None:
    summary, report = inspect_handler(LoraSpace(library, engine=None), "faces")
    assert report["format"] == "kohya" and "Fits" in summary and "rank 4" in summary
    path, notes = convert_handler(LoraSpace(library, engine=None), "faces", "comfyui")
    assert path.endswith("-comfyui.safetensors") and "from **kohya** to **comfyui**" in notes
    tensors, _ = load_lora_file(path)
    assert all(key.startswith("diffusion_model.") for key in tensors)


def test_resize_handler_plots_energy(library) -> None:
    path, summary, frame, report = resize_handler(LoraSpace(library, engine=None), "style", 2, 0, "bf16", 0, "diffusers")
    assert path.endswith(".safetensors") and "Kept" in summary
    assert list(frame.columns) == ["module", "energy_kept"] and len(frame) == len(report["modules"])
    assert (frame["energy_kept"] < 1).all()


def test_compare_handler_tables_blocks(library) -> None:
    table, notes = compare_handler(LoraSpace(library, engine=None), "style\nfaces:0.5\n")
    assert {"double 0", "single 1", "embedders"} <= set(table["block"])
    assert "style" in notes and "faces" in notes


def test_bad_file_gets_a_message_and_the_panel_keeps_serving(library) -> None:
    space = LoraSpace(library, engine=None)
    with pytest.raises(gr.Error, match="NaN or Inf"):
        convert_handler(space, "broken", "kohya")
    with pytest.raises(gr.Error, match="pickle"):
        inspect_handler(space, "user/repo/model.ckpt")
    with pytest.raises(gr.Error, match="Give 2 to"):
        compare_handler(space, "style")
    _, report = inspect_handler(space, "style")
    assert report["compatible"]


def test_parse_sources_and_many_module_frame() -> None:
    assert parse_sources("a\nuser/b:0.5\n\nc d: x\n") == (["a", "user/b", "c d: x"], [1.0, 0.5, 1.0])
    modules = [{"name": f"transformer.transformer_blocks.{i // 10}.m{i}", "energy_kept": 0.5, "norm": 1.0} for i in range(100)]
    frame = energy_frame(modules)
    assert len(frame) == 10 and frame["energy_kept"].tolist() == [0.5] * 10
