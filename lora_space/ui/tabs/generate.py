"""The Generate tab: prompt, LoRA slots with strength sliders, the library, a gallery."""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from lora_space.core.markdown_text import md_text
from lora_space.service import LoraSpace, Options
from lora_space.ui.caller import BrowserId, with_caller

SLOTS = 6
VISIBLE_SLOTS = 2  # the rest fold away until needed
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

    @property
    def option_inputs(self) -> list[gr.components.Component]:
        return [self.negative, self.seed, self.steps, self.guidance, self.size, self.num_images, self.true_cfg]

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


def fill_next_slot(slot_values: list, source: str, strength: float = 0.8) -> list:
    """Put `source` in the first empty slot, at `strength` and switched on (Discover's and Train's
    "Use in Generate"); a slot that already holds it is switched on at `strength` instead.

    Args:
        slot_values: the current (source, strength, enabled) x SLOTS values.
        source: a library name, `user/repo` or `user/repo/file.safetensors`.
        strength: the strength to set (the course's balanced default is 0.8).

    Returns:
        The new values for `GenerateControls.slots`, in the same order.

    Raises:
        LimitError: every slot holds another LoRA.
    """
    from lora_space.core.errors import LimitError

    values = list(slot_values)
    sources = [str(values[index] or "").strip() for index in range(0, len(values), 3)]
    slot = sources.index(source) if source in sources else next((i for i, name in enumerate(sources) if not name), None)
    if slot is None:
        raise LimitError(f"All {len(sources)} LoRA slots are taken; clear one in the Generate tab, then try again.")
    values[3 * slot : 3 * slot + 3] = [source, strength, True]
    return values


def library_rows(items: list[dict]) -> list[list]:
    return [
        [item["name"], item["format"], ", ".join(item["trigger_words"]), f"{item['size_bytes'] / 1e6:.1f} MB", item["owner"]]
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


def build_generate_tab(space: LoraSpace, browser_id: BrowserId) -> tuple[GenerateControls, gr.JSON, list[gr.Dropdown]]:
    """Lay out the tab; returns its controls, the recipe JSON of the last run and the LoRA pickers.

    The pickers and the library table start with the shared library; once the page has its
    visitor id (`browser_id` changes on load) they also list what the visitor owns."""
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
                with gr.Accordion(f"LoRA {VISIBLE_SLOTS + 1}-{SLOTS}", open=False):
                    for index in range(VISIBLE_SLOTS, SLOTS):
                        slots += lora_slot(index, names)
                dropdowns = slots[::3]
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
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Images", columns=2, height=420, format="png", elem_id="gallery")
            warnings = gr.Markdown()
            metadata = gr.JSON(label="Recipe of the last run")
        with gr.Column(scale=2):
            with gr.Accordion("Library (models/loras)", open=True):
                table = gr.Dataframe(
                    headers=["name", "format", "trigger words", "size", "owner"],
                    value=library_rows(space.list_loras()),
                    interactive=False,
                    wrap=True,
                    elem_id="library-table",
                )
                refresh = gr.Button("Refresh", size="sm")
                upload_words = gr.Textbox(label="Its trigger words (optional, comma-separated)", placeholder="wtrclr")
                upload = gr.File(label="Add a .safetensors LoRA", file_types=[".safetensors"], type="filepath", elem_id="library-upload")
                upload_status = gr.Markdown()

    controls = GenerateControls(prompt, negative, slots, seed, steps, guidance, size, num_images, true_cfg, presets)
    controls.library_table = table

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

    def library_updates(visitor) -> list:
        items = space.list_loras(visitor)
        names = [item["name"] for item in items]
        return [library_rows(items)] + [gr.Dropdown(choices=names) for _ in dropdowns]

    def refreshed(*, visitor, token):
        return library_updates(visitor)

    def on_upload(file_path, trigger_words, *, visitor, token):
        if not file_path:
            return [gr.skip()] * (3 + len(dropdowns))
        words = [word.strip() for word in (trigger_words or "").split(",") if word.strip()]
        entry = space.add_lora(file_path, visitor=visitor, trigger_words=words)
        where = "the library" if visitor.is_local else "your library (only you see it)"
        return [None, f"Added **{md_text(entry.name)}** to {where}."] + library_updates(visitor)  # the upload box empties for the next

    settings = space.settings
    run.click(
        with_caller(settings, on_generate),
        [*browser_id, prompt, *controls.option_inputs, *slots],
        [gallery, warnings, metadata],
        api_visibility="private",
    )
    # The pickers update in the background: their progress shows on the table, never as an overlay
    # on the pickers (an overlay that two such events leave behind blocks the picker's clicks).
    controls.library_events += [
        refresh.click(
            with_caller(settings, refreshed), [*browser_id], [table, *dropdowns], api_visibility="private", show_progress_on=table
        ),
        browser_id.stored.change(
            with_caller(settings, refreshed), [*browser_id], [table, *dropdowns], api_visibility="private", show_progress_on=table
        ),
        upload.upload(
            with_caller(settings, on_upload),
            [*browser_id, upload, upload_words],
            [upload, upload_status, table, *dropdowns],
            api_visibility="private",
            show_progress_on=[upload_status, table],
        ),
    ]
    return controls, metadata, dropdowns
