"""Beside Generate: strength sweep (X/Y grid), batch portfolio, blend recipes, and baking a blend."""

from __future__ import annotations

import gradio as gr

from lora_space.core.errors import PromptError
from lora_space.core.markdown_text import md_text
from lora_space.generate.recipe import read_recipe_file
from lora_space.generate.render import parse_strengths
from lora_space.lora.export import TARGETS
from lora_space.service import LoraSpace
from lora_space.ui.caller import BrowserId, with_caller
from lora_space.ui.errors import user_errors
from lora_space.ui.tabs.generate import (
    GenerateControls,
    library_rows,
    slot_values_to_loras,
    warnings_markdown,
)
from lora_space.ui.tabs.lora_tools import energy_frame
from lora_space.ui.tabs.slots import SLOTS


def build_blend_tools(
    space: LoraSpace, controls: GenerateControls, last_metadata: gr.JSON, pickers: list[gr.Dropdown], browser_id: BrowserId
) -> None:
    """Three accordions that reuse the Generate tab's prompt, slots and settings."""
    with gr.Accordion("Strength sweep: where does a LoRA start to break?", open=False):
        gr.Markdown("Same seed, one LoRA at several strengths (or two LoRAs as an X/Y grid); the slots stay as they are.")
        with gr.Row():
            x_source = gr.Dropdown(choices=pickers[0].choices, allow_custom_value=True, label="LoRA (X)", elem_id="sweep-x")
            x_values = gr.Textbox(value="0, 0.4, 0.8, 1.2, 1.6", label="X strengths")
            y_source = gr.Dropdown(choices=pickers[0].choices, allow_custom_value=True, label="second LoRA (Y, optional)")
            y_values = gr.Textbox(value="0, 0.5, 1", label="Y strengths")
        sweep_button = gr.Button("Run sweep")
        sweep_grid = gr.Image(  # no label badge: it would cover the grid's own title (the seed)
            label="Sweep", show_label=False, type="filepath", format="png", elem_id="sweep-grid"
        )
    with gr.Accordion("Batch and portfolio: many prompts, one LoRA mix", open=False):
        prompts = gr.Textbox(lines=6, label="Prompts, one per line", placeholder="Product showcase on marble\nProduct on a beach at dusk")
        batch_button = gr.Button("Generate all")
        batch_gallery = gr.Gallery(label="Portfolio", columns=3, height=300, format="png")
        batch_zip = gr.File(label="Portfolio (.zip with each image's recipe)")
        batch_warnings = gr.Markdown()
    with gr.Accordion("Blend recipe: save, load, bake", open=False):
        gr.Markdown(
            "Save the last run's sources, revisions, strengths, trigger words and seed; load one (or a PNG from "
            "LoRA Space, A1111 or Forge) to fill the form: LoRAs renamed since are found by their hash."
        )
        with gr.Row():
            save_button = gr.Button("Save recipe of the last run")
            saved = gr.File(label="recipe.json")
            loaded = gr.File(label="Load a recipe (.json or .png)", file_types=[".json", ".png"], type="filepath")
        load_notes = gr.Markdown()
        gr.Markdown(
            "**Bake blend**: the slots and `<lora:...>` tags of the form become one LoRA in your library, to use "
            "in ComfyUI or Forge or to publish. Rank 0 is exact (the sum of the ranks); a lower rank is smaller "
            "and keeps the share of the blend's energy shown below."
        )
        with gr.Row():
            bake_rank = gr.Number(value=0, precision=0, minimum=0, label="rank (0 = exact)")
            bake_name = gr.Textbox(label="name in the library (optional)", placeholder="ink+film")
            bake_target = gr.Dropdown(list(TARGETS), value="diffusers", label="file for (diffusers, kohya: A1111/Forge, ComfyUI)")
            bake_button = gr.Button("Bake blend", elem_id="bake-button")
        with gr.Row():
            baked_file = gr.File(label="baked LoRA")
            bake_summary = gr.Markdown(elem_id="bake-summary")
        bake_plot = gr.BarPlot(x="module", y="energy_kept", y_lim=[0, 1], label="Energy kept per module", x_label_angle=-45)

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

    def on_load(path, *, visitor, token):
        if not path:
            return [gr.skip()] * (6 + len(controls.slots))
        recipe, notes = space.link_recipe(read_recipe_file(path), visitor=visitor)
        slot_updates: list = []
        for index in range(SLOTS):
            lora = recipe.loras[index] if index < len(recipe.loras) else None
            slot_updates += [lora.source or lora.name, lora.strength, True] if lora else [None, 0.8, True]
        fields = [recipe.prompt, recipe.negative_prompt, recipe.seed, recipe.steps, recipe.guidance]
        return [*fields, *slot_updates, "\n".join(f"- {md_text(note)}" for note in notes)]

    def on_bake(prompt, rank, name, target, *slot_values, visitor, token, progress):
        result = space.bake(
            slot_values_to_loras(list(slot_values)),
            prompt=prompt or "",
            rank=int(rank or 0),
            name=name or "",
            target=target,
            visitor=visitor,
            token=token,
            progress=progress,
        )
        report = result.to_dict()
        kept = "exact: the blend's own update" if result.report.exact else f"keeps {result.energy_kept:.2%} of the blend's energy"
        parts = md_text(", ".join(f"{part['name']} {part['strength']:g}" for part in report["parts"]))
        summary = f"**{md_text(result.lora_name)}** joined your library (rank {result.rank}, {kept}) from {parts}."
        items = space.list_loras(visitor)
        pickers_update = [gr.Dropdown(choices=[item["name"] for item in items]) for _ in all_pickers]
        text = "\n\n".join([summary, warnings_markdown(result.warnings)])
        return [str(result.file), text, energy_frame(report["modules"]), library_rows(items), *pickers_update]

    def pickers_refreshed(*, visitor, token):
        names = [item["name"] for item in space.list_loras(visitor)]
        return [gr.Dropdown(choices=names) for _ in (x_source, y_source)]

    option_inputs = controls.option_inputs
    controls.pickers += [x_source, y_source]
    controls.stale += [(sweep_grid, gr.skip), (batch_gallery, gr.skip), (baked_file, gr.skip), (bake_summary, lambda: ""), (load_notes, lambda: "")]
    controls.clear_stale_on(sweep_button.click, own=[sweep_grid])
    controls.clear_stale_on(batch_button.click, own=[batch_gallery])
    controls.clear_stale_on(loaded.upload, own=[load_notes])
    controls.clear_stale_on(bake_button.click, own=[baked_file, bake_summary])
    sweep_button.click(
        with_caller(space.settings, on_sweep),
        [*browser_id, controls.prompt, x_source, x_values, y_source, y_values, *controls.slots, *option_inputs],
        sweep_grid,
        api_visibility="private",
    )
    batch_button.click(
        with_caller(space.settings, on_batch),
        [*browser_id, prompts, *controls.slots, *option_inputs],
        [batch_gallery, batch_zip, batch_warnings],
        api_visibility="private",
        show_progress_on=batch_gallery,  # a failure's badge on the gallery alone
    )
    save_button.click(on_save, last_metadata, saved, api_visibility="private")
    loaded.upload(
        with_caller(space.settings, on_load),
        [*browser_id, loaded],
        [controls.prompt, controls.negative, controls.seed, controls.steps, controls.guidance, *controls.slots, load_notes],
        api_visibility="private",
        show_progress_on=load_notes,  # never badges over the form's fields and pickers
    )
    all_pickers = [*pickers, x_source, y_source]
    bake_button.click(
        with_caller(space.settings, on_bake),
        [*browser_id, controls.prompt, bake_rank, bake_name, bake_target, *controls.slots],
        [baked_file, bake_summary, bake_plot, controls.library_table, *all_pickers],
        api_visibility="private",
        show_progress_on=[baked_file, bake_summary],  # not on the pickers (see generate.py's library events)
    )
    for event in controls.library_events:  # the sweep's pickers follow the library, as the slots do
        event.then(
            with_caller(space.settings, pickers_refreshed), [*browser_id], [x_source, y_source], api_visibility="private", show_progress="hidden"
        )
