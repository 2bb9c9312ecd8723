"""The "LoRA tools" panel: inspect, convert, resize and compare LoRAs.

`build_lora_tools(space, browser_id)` lays the panel out inside the caller's `gr.Blocks`.
The handlers are small module functions that call the `LoraSpace` (one turn of the caller's
per call, work bounded: `fairness`, `lora.tools`) or `lora.inspect` for the calling visitor
with their own Hub token (`with_caller`) and only format the results; `user_errors` turns
problems into messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from lora_space.core.errors import LoraFileError
from lora_space.core.markdown_text import md_code, md_text
from lora_space.service import LoraSpace
from lora_space.ui.caller import BrowserId, with_caller
from lora_space.ui.errors import user_errors
from lora_space.ui.tabs.generate import size_text, warnings_markdown
from lora_space.visitors.owners import LOCAL, Visitor

if TYPE_CHECKING:
    from lora_space.lora.inspect import InspectReport

SOURCE_HINT = "library name, user/repo, or user/repo/file.safetensors"
MAX_BARS = 64  # more modules than this are plotted per block
BLOCK_COLUMNS = ["block", "LoRA A", "LoRA B", "shared modules", "cosine", "norm ratio A/B"]


def summary_markdown(report: InspectReport) -> str:
    """A few lines a person reads before using a LoRA: what it is, whether it fits, what to watch."""
    alpha = "alpha unknown" if report.alpha is None else f"alpha {report.alpha:g}"
    lines = [
        (
            f"**{md_text(report.format)}** LoRA, rank {report.rank} ({alpha}), {report.num_modules} modules, "
            f"{size_text(report.size_bytes)} {md_text(report.dtype)}; made for **{md_text(report.base_model_guess)}**."
        )
    ]
    if report.compatible:
        lines.append(f"Fits {md_code(report.base_model)}: {report.coverage:.0%} of its modules land on it.")
    else:
        lines.append(f"**Does not fit {md_code(report.base_model)}.** {md_text(report.reason)}")
    if report.trigger_words:
        lines.append("Trigger words: " + ", ".join(md_code(word) for word in report.trigger_words))
    if report.training_info:
        lines.append("Training: " + md_text(", ".join(f"{key} {value}" for key, value in report.training_info.items())))
    return "\n\n".join(lines + [warnings_markdown(report.warnings)])


def energy_frame(modules: list[dict[str, Any]]) -> pd.DataFrame:
    """Energy kept per module for the bar plot; per block (energy-weighted) when there are many."""
    frame = pd.DataFrame(modules or [], columns=["name", "energy_kept", "norm"])
    if len(frame) <= MAX_BARS:
        return pd.DataFrame({"module": frame["name"].str.removeprefix("transformer."), "energy_kept": frame["energy_kept"]})
    from lora_space.lora.keymap import block_of

    frame["block"] = frame["name"].map(block_of)
    frame["total"] = frame["norm"] ** 2
    frame["kept"] = frame["energy_kept"] * frame["total"]
    grouped = frame.groupby("block", sort=False)[["kept", "total"]].sum()
    kept = (grouped["kept"] / grouped["total"].where(grouped["total"] > 0)).fillna(1.0)
    return pd.DataFrame({"module": grouped.index, "energy_kept": kept.values})


def parse_sources(text: str) -> tuple[list[str], list[float]]:
    """One LoRA per line, optionally with `:strength` (`watercolor:0.8`); 1.0 when left out."""
    sources, strengths = [], []
    for line in (line.strip() for line in text.splitlines()):
        if not line:
            continue
        head, _, tail = line.rpartition(":")
        try:
            strength = float(tail) if head else 1.0
        except ValueError:
            head, strength = "", 1.0
        sources.append(head.strip() if head else line)
        strengths.append(strength)
    return sources, strengths


@user_errors
def inspect_handler(
    space: LoraSpace, source: str, *, visitor: Visitor = LOCAL, token: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Inspect a LoRA from its header (a few ranged reads, no math): a short summary and the full report."""
    report = space.inspect(source, token=token, visitor=visitor)
    return summary_markdown(report), report.to_dict()


@user_errors
def convert_handler(
    space: LoraSpace, source: str, target: str, *, visitor: Visitor = LOCAL, token: str | None = None
) -> tuple[str, str]:
    """Convert a LoRA to the diffusers, kohya (A1111/Forge) or ComfyUI layout."""
    result = space.convert(source, target, token=token, visitor=visitor)
    note = f"Converted {result.num_modules} modules from **{md_text(result.source_format)}** to **{md_text(result.target)}**."
    return str(result.file), "\n\n".join([note, warnings_markdown(result.warnings)])


@user_errors
def resize_handler(
    space: LoraSpace,
    source: str,
    rank: float | None,
    energy: float,
    dtype: str,
    prune_below: float,
    target: str,
    *,
    visitor: Visitor = LOCAL,
    token: str | None = None,
) -> tuple[str, str, pd.DataFrame, dict[str, Any]]:
    """Resize (rank cap and/or target energy), change dtype, prune; plot the energy kept."""
    if rank is not None and rank != int(rank):
        raise LoraFileError(f"rank={rank} is not a whole number; use e.g. 16, or 0 for no cap.")
    path, report = space.resize(
        source,
        token=token,
        visitor=visitor,
        rank=int(rank) if rank else None,
        energy=float(energy) if energy else None,
        dtype=dtype,
        prune_below=float(prune_below or 0),
        target=target,
    )
    data = report.to_dict()
    summary = (
        f"Kept **{report.energy_kept:.1%}** of the update's energy; {size_text(report.bytes_before)} -> "
        f"{size_text(report.bytes_after)} of weights; {len(report.pruned)} modules pruned."
    )
    summary = "\n\n".join([summary, warnings_markdown(report.warnings)])
    return str(path), summary, energy_frame(data["modules"]), data


@user_errors
def compare_handler(
    space: LoraSpace, text: str, *, visitor: Visitor = LOCAL, token: str | None = None
) -> tuple[pd.DataFrame, str]:
    """Compare 2+ LoRAs: a table per block and the pairs that fight or overshoot."""
    sources, strengths = parse_sources(text)
    report = space.compare(sources, strengths, token=token, visitor=visitor)
    rows = [
        [row.block, row.lora_a, row.lora_b, row.shared_modules, round(row.cosine, 3),
         None if row.norm_ratio is None else round(row.norm_ratio, 3)]
        for row in report.blocks
    ]
    lines = [
        f"**{md_text(pair.lora_a)}** / **{md_text(pair.lora_b)}**: {md_text(pair.verdict)}, {pair.shared_modules} shared modules "
        f"({pair.overlap:.0%} overlap), cosine {pair.cosine:.2f}"
        for pair in report.pairs
    ]
    return pd.DataFrame(rows, columns=BLOCK_COLUMNS), "\n\n".join([*lines, warnings_markdown(report.warnings)])


def build_lora_tools(space: LoraSpace, browser_id: BrowserId) -> None:
    """Lay out the "LoRA tools" accordion inside the caller's `gr.Blocks` context."""
    with gr.Accordion("LoRA tools: inspect, convert, resize, compare", open=False):
        with gr.Tab("Inspect"):
            gr.Markdown("Read a LoRA's header (a Hub file is not downloaded): layout, rank, alpha, base model, fit.")
            inspect_source_box = gr.Textbox(label="LoRA", placeholder=SOURCE_HINT, elem_id="tools-inspect-source")
            inspect_button = gr.Button("Inspect", elem_id="tools-inspect")
            inspect_summary = gr.Markdown(elem_id="tools-inspect-summary")
            inspect_report = gr.JSON(label="Report")
        with gr.Tab("Convert"):
            gr.Markdown("Write a LoRA for diffusers, kohya (A1111/Forge) or ComfyUI; every weight is kept bit for bit.")
            with gr.Row():
                convert_source_box = gr.Textbox(label="LoRA", placeholder=SOURCE_HINT)
                convert_target = gr.Radio(["diffusers", "kohya", "comfyui"], value="kohya", label="To")
            convert_button = gr.Button("Convert")
            convert_file = gr.File(label="Converted LoRA")
            convert_notes = gr.Markdown()
        with gr.Tab("Resize"):
            gr.Markdown("Lower the rank by SVD (a rank cap, a target energy, or both), change dtype, prune quiet modules.")
            resize_source_box = gr.Textbox(label="LoRA", placeholder=SOURCE_HINT)
            with gr.Row():
                resize_rank = gr.Number(value=16, precision=0, minimum=0, label="Rank cap (0: none)")
                resize_energy = gr.Slider(0, 1, value=0, step=0.01, label="Target energy (0: off)")
                resize_dtype = gr.Dropdown(["keep", "bf16", "fp16", "fp32"], value="keep", label="dtype")
                resize_prune = gr.Slider(0, 0.2, value=0, step=0.005, label="Prune below (share of largest update)")
                resize_target = gr.Radio(["diffusers", "kohya", "comfyui"], value="diffusers", label="Layout")
            resize_button = gr.Button("Resize")
            resize_file = gr.File(label="Resized LoRA")
            resize_summary = gr.Markdown()
            resize_plot = gr.BarPlot(x="module", y="energy_kept", y_lim=[0, 1], label="Energy kept", x_label_angle=-45)
            resize_report = gr.JSON(label="Report")
        with gr.Tab("Compare"):
            gr.Markdown("Where do LoRAs change the same layers, and do they push the same way (cosine 1) or fight (-1)?")
            compare_box = gr.Textbox(lines=3, label="LoRAs, one per line (optionally name:strength)")
            compare_button = gr.Button("Compare")
            compare_notes = gr.Markdown()
            compare_table = gr.Dataframe(headers=BLOCK_COLUMNS, label="Per block", interactive=False)
    def handler(function):
        return with_caller(space.settings, lambda *values, visitor, token: function(space, *values, visitor=visitor, token=token))

    inspect_button.click(
        handler(inspect_handler), [*browser_id, inspect_source_box], [inspect_summary, inspect_report], api_visibility="private"
    )
    convert_button.click(
        handler(convert_handler), [*browser_id, convert_source_box, convert_target], [convert_file, convert_notes],
        api_visibility="private",
    )
    resize_button.click(
        handler(resize_handler),
        [*browser_id, resize_source_box, resize_rank, resize_energy, resize_dtype, resize_prune, resize_target],
        [resize_file, resize_summary, resize_plot, resize_report],
        api_visibility="private",
    )
    compare_button.click(
        handler(compare_handler), [*browser_id, compare_box], [compare_table, compare_notes], api_visibility="private"
    )
