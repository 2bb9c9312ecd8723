"""Where "Use in Generate" and "Try in Generate" put a LoRA: the first free slot (the visible ones
first), a note on the Generate tab saying where it went and what else is on, and "Switch the others off"."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from lora_space.core.markdown_text import md_text

SLOTS = 6
VISIBLE_SLOTS = 2  # the rest fold away until needed


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


@dataclass(frozen=True)
class Placement:
    """Where a LoRA sent from Discover or Train went: its slot (0-based) and the other slots that are on."""

    values: list
    source: str
    slot: int
    strength: float
    others_on: list[tuple[int, str]]


def place_lora(slot_values: list, source: str, strength: float = 0.8) -> Placement:
    """Put `source` in the first free slot (`fill_next_slot`: the visible ones come first) and say
    which other slots are still on.

    Raises:
        LimitError: every slot holds another LoRA.
    """
    values = fill_next_slot(slot_values, source, strength)
    sources = [str(values[index] or "").strip() for index in range(0, len(values), 3)]
    slot = sources.index(source)
    others = [(index, name) for index, name in enumerate(sources) if name and index != slot and values[3 * index + 2]]
    return Placement(values, source, slot, strength, others)


def placement_note(placement: Placement, trigger_words: list[str] = ()) -> str:
    """The Generate tab's line about a placed LoRA: which slot, whether it was folded away, what else is on."""
    where = f"LoRA slot {placement.slot + 1}"
    if placement.slot >= VISIBLE_SLOTS:
        where += f" (the group *LoRA {VISIBLE_SLOTS + 1}-{SLOTS}*, now open)"
    text = f"➡️ **{md_text(placement.source)}** is in {where}, on, at strength {placement.strength:g}."
    if trigger_words:
        text += f" Its trigger words {md_text(', '.join(trigger_words))} go into the prompt."
    if placement.others_on:
        also = ", ".join(f"slot {index + 1} ({md_text(name)})" for index, name in placement.others_on)
        text += f" Also on: {also}; *Switch the others off* tries it alone."
    return text


def placement_updates(placement: Placement, trigger_words: list[str] = ()) -> list:
    """Values for `GenerateControls.placement_outputs`."""
    return [
        *placement.values,
        gr.Accordion(open=True) if placement.slot >= VISIBLE_SLOTS else gr.skip(),
        placement_note(placement, trigger_words),
        gr.Button(visible=bool(placement.others_on)),
        placement.source,
    ]


def switch_others_off(placed: str, *slot_values) -> list:
    """"Switch the others off": every slot but the one holding `placed` is switched off (kept as it is)."""
    values = list(slot_values)
    for index in range(0, len(values), 3):
        if values[index] and str(values[index]).strip() != placed:
            values[index + 2] = False
    note = f"Only **{md_text(placed)}** is on now; tick a slot's *on* box to bring it back." if placed else ""
    return [*values, note, gr.Button(visible=False)]
