"""The Generate tab: prompt, LoRA slots with strength sliders, the library, a gallery."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from lora_space.core.errors import LoraSpaceError
from lora_space.core.markdown_text import md_text
from lora_space.generate.prompts import parse_prompt
from lora_space.library.sources import unknown_names
from lora_space.service import LoraSpace, Options
from lora_space.ui.caller import BrowserId, on_visitor_known, with_caller
from lora_space.ui.tabs.slots import SLOTS, VISIBLE_SLOTS, switch_others_off

STRENGTH_INFO = "0 = off; the course's balanced range is 0.6-1.0; above ~1.2 artifacts appear"
SIZE_PRESETS = {
    "1024x1024 square": (1024, 1024),
    "832x1216 portrait": (832, 1216),
    "1216x832 landscape": (1216, 832),
    "768x1344 tall": (768, 1344),
    "512x512 draft": (512, 512),
}
TINY_SIZE_PRESETS = {"64x64 tiny": (64, 64), "96x64 tiny": (96, 64), "128x128 tiny": (128, 128)}


@dataclass
class GenerateControls:
    """The tab's inputs, shared with the sweep, batch and recipe panels."""

    prompt: gr.Textbox
    negative: gr.Textbox
    slots: list[gr.components.Component]  # (source, strength, enabled) x SLOTS
    seed: gr.Number
    steps: gr.Slider
    guidance: gr.Slider
    size: gr.Dropdown
    num_images: gr.Slider
    true_cfg: gr.Slider
    presets: dict[str, tuple[int, int]]
    # Events after which the library may have changed (refresh, page load, upload): other panels'
    # LoRA pickers refresh with `.then` on these.
    library_events: list = field(default_factory=list)
    library_table: gr.Dataframe | None = None  # the library list, for panels that add to the library
    # Where "Use in Generate" / "Try in Generate" put a LoRA: the folded slots' group (opened when
    # the LoRA lands there), a note saying where it went, and a button that switches the others off.
    extra_slots: gr.Accordion | None = None
    slot_note: gr.Markdown | None = None
    solo_button: gr.Button | None = None
    placed: gr.State | None = None  # the source last put in a slot, for `solo_button`
    # After a failed run that named a LoRA nobody has (the lesson's `watercolor_style`): a button
    # that searches Discover for that name (`discover.wire_discover_to_generate`), and the name.
    discover_hint: gr.Button | None = None
    hint_name: gr.State | None = None
    # Every LoRA picker of the tab (the slots', then the sweep's: blend_tools adds them).
    pickers: list[gr.Dropdown] = field(default_factory=list)
    # `follow_library(event)`: after `event`, the library table and every picker are listed again.
    follow_library: Callable[[Any], None] | None = None
    # Outputs whose red "Error" badge or old message goes at the tab's next action, each with a
    # function giving its cleared value (`clear_stale_on`).
    stale: list[tuple[gr.components.Component, Callable[[], Any]]] = field(default_factory=list)

    @property
    def option_inputs(self) -> list[gr.components.Component]:
        return [self.negative, self.seed, self.steps, self.guidance, self.size, self.num_images, self.true_cfg]

    @property
    def placement_outputs(self) -> list[gr.components.Component]:
        """What `placement_updates` fills: the slots, the folded group, the note, the button, the state."""
        return [*self.slots, self.extra_slots, self.slot_note, self.solo_button, self.placed]

    def clear_stale_on(self, listener: Callable, *, own: list | tuple = ()) -> None:
        """At `listener` (e.g. `button.click`), clear the red "Error" badges and old messages of the
        tab's other actions (`stale`), leaving the outputs in `own` to the action itself.

        An event that writes `gr.skip()` to an output resets its status, so a badge goes and the
        images stay; messages are emptied.
        """
        kept = [(component, value) for component, value in self.stale if all(component is not mine for mine in own)]
        listener(
            lambda: [value() for _, value in kept],
            None,
            [component for component, _ in kept],
            queue=False,
            show_progress="hidden",
            api_visibility="private",
        )

    def options(self, negative, seed, steps, guidance, size, num_images, true_cfg) -> Options:
        width, height = self.presets[size]
        return Options(
            negative_prompt=negative or "",
            seed=int(seed),
            steps=int(steps),
            guidance=float(guidance),
            true_cfg=float(true_cfg),
            width=width,
            height=height,
            num_images=int(num_images),
        )


def slot_values_to_loras(values: list) -> list[dict]:
    """Widget values (source, strength, enabled) x SLOTS -> the API's `loras` list."""
    loras = []
    for index in range(0, len(values), 3):
        source, strength, enabled = values[index : index + 3]
        if enabled and source and str(source).strip():
            loras.append({"source": str(source).strip(), "strength": float(strength)})
    return loras


def size_text(size: int) -> str:
    """A file size as a person reads it: bytes, kB, MB or GB, never "0.0 MB" for a small file."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


LIBRARY_COLUMNS = ["name", "trigger words", "size", "format", "owner"]


def library_rows(items: list[dict]) -> list[list]:
    return [
        [item["name"], ", ".join(item["trigger_words"]), size_text(item["size_bytes"]), item["format"], item["owner"]]
        for item in items
    ]


def warnings_markdown(warnings: list[str]) -> str:
    """Warnings (they may quote names and words from files and the Hub) as a Markdown list, shown literally."""
    return "\n".join(f"- ⚠️ {md_text(text)}" for text in warnings)


def lora_slot(index: int, names: list[str]) -> list[gr.components.Component]:
    """One slot: a source picker (library, or any Hub id typed in), a strength slider, an on switch."""
    with gr.Row(equal_height=True):
        source = gr.Dropdown(
            choices=names,
            value=None,
            allow_custom_value=True,
            label=f"LoRA {index + 1}",
            info="library name, user/repo or user/repo/file.safetensors" if index == 0 else None,
            scale=3,
        )
        strength = gr.Slider(-2, 3, value=0.8, step=0.05, label="strength", info=STRENGTH_INFO if index == 0 else None, scale=3)
        enabled = gr.Checkbox(value=True, label="on", scale=1, min_width=60)
    return [source, strength, enabled]


def library_heading(space: LoraSpace) -> str:
    """The library's title: its folder on a local run; on a Space, whose LoRAs it lists (no server path)."""
    if space.settings.on_space:
        return "Library: this Space's LoRAs (shared, read-only) and yours"
    return f"Library ({space.settings.lora_dir})"


def build_generate_tab(space: LoraSpace, browser_id: BrowserId) -> tuple[GenerateControls, gr.JSON, list[gr.Dropdown]]:
    """Lay out the tab; returns its controls, the recipe JSON of the last run and the LoRA pickers.

    The pickers and the library table start with the shared library; once the page has its
    visitor id (`on_visitor_known`) they also list what the visitor owns."""
    presets = TINY_SIZE_PRESETS if space.settings.is_tiny else SIZE_PRESETS
    default_steps = space.settings.default_steps
    names = [item["name"] for item in space.list_loras()]

    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(
                label="Prompt",
                lines=3,
                placeholder="Portrait of a woman in a garden <lora:watercolor_style:0.8> <lora:detailed_eyes:0.6>",
                info="Add LoRAs with <lora:NAME:STRENGTH> tags or the slots below; trigger words are added for you.",
                elem_id="prompt",
            )
            negative = gr.Textbox(label="Negative prompt", lines=1, placeholder="blurry, oversaturated")
            with gr.Accordion(f"LoRA slots (up to {SLOTS})", open=True):
                slots: list[gr.components.Component] = []
                for index in range(VISIBLE_SLOTS):
                    slots += lora_slot(index, names)
                with gr.Accordion(f"LoRA {VISIBLE_SLOTS + 1}-{SLOTS}", open=False, elem_id="extra-slots") as extra_slots:
                    for index in range(VISIBLE_SLOTS, SLOTS):
                        slots += lora_slot(index, names)
                dropdowns = slots[::3]
                slot_note = gr.Markdown(elem_id="slot-note")
                solo_button = gr.Button("Switch the others off", size="sm", visible=False, elem_id="slot-solo")
                placed = gr.State("")
            with gr.Accordion("Settings", open=False):
                with gr.Row():
                    seed = gr.Number(value=-1, precision=0, label="seed (-1 = random)", minimum=-1)
                    steps = gr.Slider(1, space.settings.limits.max_steps, value=default_steps, step=1, label="steps")
                    guidance = gr.Slider(0, 10, value=3.5, step=0.1, label="guidance")
                with gr.Row():
                    size = gr.Dropdown(list(presets), value=list(presets)[0], label="size")
                    num_images = gr.Slider(1, space.settings.limits.max_images, value=1, step=1, label="images")
                    true_cfg = gr.Slider(1, 10, value=1, step=0.5, label="true CFG for the negative prompt (1 = off; doubles the time)")
            run = gr.Button("Generate", variant="primary", elem_id="generate-button")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Images", columns=2, height=420, format="png", elem_id="gallery")
            warnings = gr.Markdown(elem_id="generate-warnings")
            discover_hint = gr.Button(visible=False, size="sm", elem_id="discover-hint")
            hint_name = gr.State("")
            metadata = gr.JSON(label="Recipe of the last run", elem_id="recipe")
    # The library spans the page's width, so that its five columns and their headers fit.
    with gr.Accordion(library_heading(space), open=True, elem_id="library"):
        with gr.Row():
            with gr.Column(scale=3):
                table = gr.Dataframe(
                    headers=LIBRARY_COLUMNS,
                    value=library_rows(space.list_loras()),
                    interactive=False,
                    wrap=True,
                    column_widths=["34%", "30%", "10%", "12%", "14%"],
                    max_height=360,
                    elem_id="library-table",
                )
                refresh = gr.Button("Refresh", size="sm")
            with gr.Column(scale=1, min_width=260):
                upload_name = gr.Textbox(
                    label="Its name in " + ("your library" if space.settings.on_space else "the library") + " (optional)",
                    placeholder="the file's name",
                    info="A name that is taken is refused: type another and press Enter.",
                    elem_id="library-upload-name",
                )
                upload_words = gr.Textbox(label="Its trigger words (optional, comma-separated)", placeholder="wtrclr")
                upload = gr.File(label="Add a .safetensors LoRA", file_types=[".safetensors"], type="filepath", elem_id="library-upload")
                upload_status = gr.Markdown(elem_id="library-upload-status")

    controls = GenerateControls(prompt, negative, slots, seed, steps, guidance, size, num_images, true_cfg, presets)
    controls.library_table = table
    controls.extra_slots, controls.slot_note, controls.solo_button, controls.placed = extra_slots, slot_note, solo_button, placed
    controls.discover_hint, controls.hint_name = discover_hint, hint_name
    controls.pickers = list(dropdowns)
    controls.stale = [
        (gallery, gr.skip),
        (metadata, gr.skip),
        (slot_note, lambda: ""),
        (solo_button, lambda: gr.Button(visible=False)),
        (upload_status, lambda: ""),
        (discover_hint, lambda: gr.Button(visible=False)),
    ]

    def on_generate(prompt_text, *values, visitor, token, progress):
        option_values, slot_values = values[: len(controls.option_inputs)], values[len(controls.option_inputs) :]
        output = space.generate(
            prompt_text,
            slot_values_to_loras(list(slot_values)),
            controls.options(*option_values),
            visitor=visitor,
            token=token,
            progress=progress,
        )
        captions = [(str(file), f"seed {output.metadata['seed'] + index}") for index, file in enumerate(output.files)]
        return captions, warnings_markdown(output.warnings), output.metadata

    def on_failed(prompt_text, *slot_values, visitor, token):
        """After a failed run: offer to search Discover for a LoRA name that nothing here has."""
        try:
            tags = [tag.name for tag in parse_prompt(prompt_text or "").tags]
        except LoraSpaceError:  # the prompt itself was the problem; its message says so
            tags = []
        sources = [item["source"] for item in slot_values_to_loras(list(slot_values))] + tags
        names = unknown_names(sources, settings=space.settings, visitor=visitor)
        if not names:
            return gr.Button(visible=False), ""
        return gr.Button(value=f"🔎 Search Discover for “{names[0]}”", visible=True), names[0]

    def library_updates(visitor, pickers: int = len(dropdowns)) -> list:
        items = space.list_loras(visitor)
        names = [item["name"] for item in items]
        return [library_rows(items)] + [gr.Dropdown(choices=names) for _ in range(pickers)]

    def refreshed(*, visitor, token):
        return library_updates(visitor)

    def on_upload(file_path, name, trigger_words, *, visitor, token):
        if not file_path:
            return [gr.skip()] * (3 + len(dropdowns))
        words = [word.strip() for word in (trigger_words or "").split(",") if word.strip()]
        entry = space.add_lora(file_path, visitor=visitor, name=(name or "").strip() or None, trigger_words=words)
        where = "the library" if visitor.is_local else "your library (only you see it)"
        return [None, f"Added **{md_text(entry.name)}** to {where}."] + library_updates(visitor)  # the upload box empties for the next

    settings = space.settings

    def follow_library(event) -> None:
        pickers = list(controls.pickers)

        def refreshed_all(*, visitor, token):
            return library_updates(visitor, len(pickers))

        event.then(with_caller(settings, refreshed_all), [*browser_id], [table, *pickers], api_visibility="private", show_progress="hidden")

    controls.follow_library = follow_library
    controls.clear_stale_on(run.click, own=[gallery, metadata])
    controls.clear_stale_on(refresh.click)
    controls.clear_stale_on(upload.upload, own=[upload_status])
    controls.clear_stale_on(upload_name.submit, own=[upload_status])
    run.click(
        with_caller(settings, on_generate),
        [*browser_id, prompt, *controls.option_inputs, *slots],
        [gallery, warnings, metadata],
        api_visibility="private",
        show_progress_on=gallery,  # progress, and a failure's badge, on the gallery alone (not over the recipe)
    ).failure(with_caller(settings, on_failed), [*browser_id, prompt, *slots], [discover_hint, hint_name], api_visibility="private", show_progress="hidden")
    solo_button.click(
        switch_others_off, [placed, *slots], [*slots, slot_note, solo_button], api_visibility="private", show_progress="hidden"
    )
    # The pickers update in the background: their progress shows on the table, never as an overlay
    # on the pickers (an overlay that two such events leave behind blocks the picker's clicks).
    upload_inputs = [*browser_id, upload, upload_name, upload_words]
    upload_outputs = [upload, upload_status, table, *dropdowns]
    controls.library_events += [
        refresh.click(
            with_caller(settings, refreshed), [*browser_id], [table, *dropdowns], api_visibility="private", show_progress_on=table
        ),
        on_visitor_known(
            browser_id, with_caller(settings, refreshed), [*browser_id], [table, *dropdowns], api_visibility="private", show_progress_on=table
        ),
        upload.upload(
            with_caller(settings, on_upload), upload_inputs, upload_outputs, api_visibility="private", show_progress_on=[upload_status, table]
        ),
        upload_name.submit(  # a new name for the file still in the box (one refused for its name)
            with_caller(settings, on_upload), upload_inputs, upload_outputs, api_visibility="private", show_progress_on=[upload_status, table]
        ),
    ]
    return controls, metadata, dropdowns
