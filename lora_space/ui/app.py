"""The Gradio app: `build_demo()` lays out the four tabs and the typed API endpoints."""

from __future__ import annotations

import logging
import sys

import gradio as gr

from lora_space.core.errors import LoraSpaceError
from lora_space.core.settings import TINY, TINY_RANDOM, Settings
from lora_space.service import LoraSpace, create_space
from lora_space.ui.api import bake as bake_api
from lora_space.ui.api import generate as api
from lora_space.ui.api import lora_tools as lora_tools_api
from lora_space.ui.api import train as train_api
from lora_space.ui.caller import build_browser_id, sign_in_missing, sign_in_off_line
from lora_space.ui.tabs import (
    blend_tools,
    discover,
    generate,
    lora_tools,
    publish,
    train,
)
from lora_space.visitors.cleanup import gradio_delete_cache, preview_root, start_cleaner
from lora_space.visitors.disk import OUTPUTS

TITLE = "LoRA Space"
TINY_NOTES = {
    TINY: (
        "**tiny mode**: the base model is a small FLUX-architecture model, pre-trained offline on a CPU to draw simple "
        "scenes: one shape of one colour on a plain background. Try *a red circle on a blue background* (64x64): expect "
        "a rough red blob on blue, not a crisp drawing. A LoRA trained in the Train tab changes what it draws: the "
        "example `flat_shapes.zip` adds black marks at and around the shape. Every feature runs through the same code "
        "as FLUX.1-dev on a GPU."
    ),
    TINY_RANDOM: (
        "**tiny-random mode**: the base model is a random FLUX-architecture test model built offline, "
        "so images are blocks of colour, not pictures (its VAE carries colour, so a LoRA trained on red images "
        "turns them red). Every feature runs through the same code as FLUX.1-dev on a GPU."
    ),
}


def header_markdown(space: LoraSpace) -> str:
    settings = space.settings
    device = space.engine.device
    text = f"# {TITLE}\nFind, blend, train and publish FLUX LoRAs. Base model: `{settings.base_model}` on `{device}`."
    if settings.is_tiny:
        text += f"\n\n{TINY_NOTES[settings.base_model]}"
    return text


def build_demo(space: LoraSpace) -> gr.Blocks:
    """The whole app for one `LoraSpace`; tabs in the order Discover, Generate, Train, Publish."""
    with gr.Blocks(title=TITLE, delete_cache=gradio_delete_cache(space.settings)) as demo:  # Gradio's file copies age out
        browser_id = build_browser_id(space.settings, demo)  # who the page's visitor is (API.md "Who owns what")
        with gr.Row(equal_height=True):
            gr.Markdown(header_markdown(space), elem_id="header")
            missing = sign_in_missing(space.settings)
            if space.settings.on_space and not missing:  # elsewhere gradio would mock OAuth with a whoami() call
                gr.LoginButton(scale=0, min_width=220)
        if missing:  # a Space without OAuth runs, anonymously, and says so
            gr.Markdown(f"ℹ️ {sign_in_off_line(missing)}", elem_id="sign-in-off")
        with gr.Tabs() as tabs:
            with gr.Tab("Discover", id="discover"):
                found = discover.build_discover_tab(space, browser_id)
            with gr.Tab("Generate", id="generate"):
                controls, last_metadata, pickers = generate.build_generate_tab(space, browser_id)
                blend_tools.build_blend_tools(space, controls, last_metadata, pickers, browser_id)
                lora_tools.build_lora_tools(space, browser_id)
            with gr.Tab("Train", id="train"):
                trained = train.build_train_tab(space, browser_id)
            with gr.Tab("Publish", id="publish"):
                publish_source = publish.build_publish_tab(space, browser_id)
        discover.wire_discover_to_generate(found, controls, tabs)  # cross-tab events, once every tab exists
        train.wire_train_to_generate(trained, controls, tabs)
        train.wire_train_to_publish(trained, publish_source, tabs)
        lora_tools_api.register_lora_tool_endpoints(space)
        api.register_endpoints(space)
        discover.register_discover_endpoints(space)
        publish.register_publish_endpoints(space)
        bake_api.register_bake_endpoint(space)
        train_api.register_train_endpoints(space)
    return demo


def launch() -> None:
    """Start the app; bad settings stop it with one line, not a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        space = create_space(settings)
    except LoraSpaceError as error:
        print(f"LoRA Space cannot start: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    missing = sign_in_missing(settings)
    if missing:
        logging.getLogger("lora_space").warning(sign_in_off_line(missing))
    demo = build_demo(space)
    start_cleaner(settings)  # aged outputs and visitor files (lora_space/visitors/cleanup.py)
    demo.queue(default_concurrency_limit=4, max_size=settings.limits.queue_size).launch(
        max_file_size=settings.storage.max_upload_bytes,
        state_session_capacity=settings.limits.max_sessions,  # each session's state costs memory until evicted
        # Output, job and preview folders are named with 128 random bits: only their caller finds them.
        allowed_paths=[str((settings.data_dir / OUTPUTS).resolve()), str(space.jobs.root.resolve()), str(preview_root(settings).resolve())],
        theme=gr.themes.Soft(),
    )
