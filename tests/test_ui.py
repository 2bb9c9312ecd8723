"""`build_demo()` in process: the four tabs in order, the public endpoints, the header."""

from __future__ import annotations

import gradio as gr

from lora_space.tiny.model import build_tiny_pipeline
from lora_space.generate.engine import Engine
from lora_space.service import LoraSpace
from lora_space.ui.app import build_demo, header_markdown

PUBLIC = {"list_loras", "inspect_lora", "generate", "strength_sweep", "batch_generate", "convert_lora", "resize_lora", "compare_loras",
          "start_training", "training_status", "cancel_training"}


def test_build_demo_has_the_tabs_and_endpoints(settings):
    space = LoraSpace(settings, Engine(build_tiny_pipeline()))
    demo = build_demo(space)
    assert isinstance(demo, gr.Blocks)
    tabs = [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab) and block.id in {"discover", "generate", "train", "publish"}]
    assert tabs == ["Discover", "Generate", "Train", "Publish"]
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert PUBLIC <= public
    assert "tiny" in header_markdown(space) and "blocks of colour" in header_markdown(space)
