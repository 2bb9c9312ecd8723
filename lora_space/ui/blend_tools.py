"""Beside Generate: strength sweep (X/Y grid), batch portfolio, and blend recipes as JSON."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..errors import PromptError
from ..recipe import recipe_from_json
from ..service import LoraSpace, parse_strengths
from .errors import user_errors
from .generate import SLOTS, GenerateControls, slot_values_to_loras, warnings_markdown
from .visitors import with_caller


def build_blend_tools(
    space: LoraSpace, controls: GenerateControls, last_metadata: gr.JSON, pickers: list[gr.Dropdown], browser_id: gr.BrowserState
) -> None:
    """Three accordions that reuse the Generate tab's prompt, slots and settings."""
    with gr.Accordion("Strength sweep: where does a LoRA start to break?", open=False):
        gr.Markdown("Same seed, one LoRA at several strengths (or two LoRAs as an X/Y grid); the slots stay as they are.")
        with gr.Row():
            x_source = gr.Dropdown(choices=pickers[0].choices, allow_custom_value=True, label="LoRA (X)")
            x_values = gr.Textbox(value="0, 0.4, 0.8, 1.2, 1.6", label="X strengths")
            y_source = gr.Dropdown(choices=pickers[0].choices, allow_custom_value=True, label="second LoRA (Y, optional)")
            y_values = gr.Textbox(value="0, 0.5, 1", label="Y strengths")
        sweep_button = gr.Button("Run sweep")
        sweep_grid = gr.Image(label="Sweep", type="filepath", format="png", elem_id="sweep-grid")
    with gr.Accordion("Batch and portfolio: many prompts, one LoRA mix", open=False):
        prompts = gr.Textbox(lines=6, label="Prompts, one per line", placeholder="Product showcase on marble\nProduct on a beach at dusk")
        batch_button = gr.Button("Generate all")
        batch_gallery = gr.Gallery(label="Portfolio", columns=3, height=300, format="png")
        batch_zip = gr.File(label="Portfolio (.zip with each image's recipe)")
        batch_warnings = gr.Markdown()
    with gr.Accordion("Blend recipe: save and load", open=False):
        gr.Markdown("Save the last run's sources, revisions, strengths, trigger words and seed; load one to fill the form.")
        with gr.Row():
            save_button = gr.Button("Save recipe of the last run")
            saved = gr.File(label="recipe.json")
            loaded = gr.File(label="Load a recipe.json", file_types=[".json"], type="filepath")

    def slots_and_options(values: tuple):
        return values[: len(controls.slots)], controls.options(*values[len(controls.slots) :])

    def on_sweep(prompt, x, x_text, y, y_text, *values, visitor, token, progress):
        slot_values, options = slots_and_options(values)
        if not x:
            raise PromptError("Pick the LoRA to sweep (X) first.")
        output = space.sweep(
            prompt,
            slot_values_to_loras(list(slot_values)),
            x,
            parse_strengths(x_text),
            y or "",
            parse_strengths(y_text) if y else None,
            options,
            visitor=visitor,
            token=token,
            progress=progress,
        )
        return str(output.grid)

    def on_batch(prompt_lines, *values, visitor, token, progress):
        slot_values, options = slots_and_options(values)
        output = space.batch(
            prompt_lines.splitlines(), slot_values_to_loras(list(slot_values)), options, visitor=visitor, token=token, progress=progress
        )
        images = [str(file) for result in output.outputs for file in result.files]
        notes = sorted({text for result in output.outputs for text in result.warnings})
        return images, str(output.archive), warnings_markdown(notes)

    @user_errors
    def on_save(metadata):
        if not metadata:
            raise PromptError("Generate an image first; its recipe is what gets saved.")
        return str(space.save_recipe(metadata))

    @user_errors
    def on_load(path):
        if not path:
            return [gr.skip()] * (5 + len(controls.slots))
        recipe = recipe_from_json(Path(path).read_text(encoding="utf-8"))
        slot_updates: list = []
        for index in range(SLOTS):
            lora = recipe.loras[index] if index < len(recipe.loras) else None
            slot_updates += [lora.source or lora.name, lora.strength, True] if lora else [None, 0.8, True]
        return [recipe.prompt, recipe.negative_prompt, recipe.seed, recipe.steps, recipe.guidance, *slot_updates]

    option_inputs = controls.option_inputs
    sweep_button.click(
        with_caller(space.settings, on_sweep),
        [browser_id, controls.prompt, x_source, x_values, y_source, y_values, *controls.slots, *option_inputs],
        sweep_grid,
        api_visibility="private",
    )
    batch_button.click(
        with_caller(space.settings, on_batch),
        [browser_id, prompts, *controls.slots, *option_inputs],
        [batch_gallery, batch_zip, batch_warnings],
        api_visibility="private",
    )
    save_button.click(on_save, last_metadata, saved, api_visibility="private")
    loaded.upload(
        on_load,
        loaded,
        [controls.prompt, controls.negative, controls.seed, controls.steps, controls.guidance, *controls.slots],
        api_visibility="private",
    )
