"""The Gradio app: `build_demo()` lays out the four tabs and the typed API endpoints."""

from __future__ import annotations

import logging
import sys

import gradio as gr

from ..cleanup import gradio_delete_cache, preview_root, start_cleaner
from ..errors import LoraSpaceError
from ..service import LoraSpace
from ..settings import Settings
from . import api, bake_api, blend_tools, generate, lora_tools
from . import discover, publish, train
from . import train_api
from .visitors import build_browser_id, sign_in_missing, sign_in_off_line

TITLE = "LoRA Space"
TINY_NOTE = (
    "**tiny mode**: the base model is a random FLUX-architecture test model built offline, "
    "so images are blocks of colour, not pictures (its VAE carries colour, so a LoRA trained on red images "
    "turns them red). Every feature runs through the same code as FLUX.1-dev on a GPU."
)


def header_markdown(space: LoraSpace) -> str:
    settings = space.settings
    device = space.engine.device
    text = f"# {TITLE}\nFind, blend, train and publish FLUX LoRAs. Base model: `{settings.base_model}` on `{device}`."
    if settings.is_tiny:
        text += f"\n\n{TINY_NOTE}"
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
        api.register_endpoints(space)
        discover.register_discover_endpoints(space)
        publish.register_publish_endpoints(space)
        bake_api.register_bake_endpoint(space)
        train_api.register_train_endpoints(space)
    return demo


def create_space(settings: Settings) -> LoraSpace:
    """Load the base model and wrap it; raises `LoraSpaceError` with a clear message."""
    from ..base_model import load_base_pipeline
    from ..compiled import CompileOptions
    from ..engine import Engine

    pipe = load_base_pipeline(settings)  # a gated base model is read with HF_TOKEN, the Space's own
    compile = CompileOptions(slots=settings.compile_slots, rank=settings.compile_rank) if settings.compile else None
    engine = Engine(
        pipe, cache_size=settings.adapter_cache_size, fuse_memory_bytes=settings.fuse_memory_mb * 2**20, compile=compile
    )
    return LoraSpace(settings, engine)


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
    start_cleaner(settings)  # aged outputs and visitor files (lora_space/cleanup.py)
    demo.queue(default_concurrency_limit=4, max_size=settings.limits.queue_size).launch(
        max_file_size=settings.storage.max_upload_bytes,
        state_session_capacity=settings.limits.max_sessions,  # each session's state costs memory until evicted
        # Output, job and preview folders are named with 128 random bits: only their caller finds them.
        allowed_paths=[str(space.outputs_dir.resolve()), str(space.jobs.root.resolve()), str(preview_root(settings).resolve())],
        theme=gr.themes.Soft(),
    )
