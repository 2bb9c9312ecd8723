"""Which base model a published card may name: the one every module of the LoRA fits.

A card's `base_model` is a promise: the Hub lists the LoRA as an adapter of that model, and
the card's snippet loads it there. So before anything is published, each module of the LoRA is
checked against the shapes of the base the card names (`lora.shapes`, built from configs, no
weights):

1. The base this app stands for on the Hub (`Settings.hub_base_model`: FLUX.1-dev in `tiny`
   mode and for a local folder). A LoRA that fits it whole is published for it.
2. LoRA Space's tiny test model. A LoRA trained in `tiny` mode is 32 wide and loads into no
   real model. It is published, not refused, so that the whole flow (card, samples, one commit)
   can be tried on a free CPU Space and tested against a Hub stand-in. Its card names no
   `base_model`, and says what the LoRA is: a test artefact of the tiny model.
3. Anything else is refused, with the module that does not fit.

An edited card is checked the same way: each `base_model` it names must fit the LoRA whole.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lora_space.core.errors import PublishError
from lora_space.core.settings import TINY, Settings
from lora_space.library.base import current_base
from lora_space.lora.formats import LoraSet
from lora_space.lora.shapes import (
    BaseShapes,
    drawing_shapes,
    known_base,
    lora_hidden_size,
    misfits,
    tiny_shapes,
)


@dataclass(frozen=True)
class MadeFor:
    """The base a LoRA is published for.

    Attributes:
        hub_id: the card's `base_model`; "" for the tiny test model (the card names none).
        label: how `reproducibility.json` names it (the Hub id, or `tiny`).
        width: the transformer width the LoRA was made for, when known.
    """

    hub_id: str
    label: str
    width: int | None

    @property
    def is_test_model(self) -> bool:
        return not self.hub_id


def made_for(name: str, lora: LoraSet, settings: Settings) -> MadeFor:
    """The base the card of `lora` names, after checking every module's shape against it.

    Raises:
        PublishError: the LoRA fits neither the app's Hub base nor a tiny test model.
    """
    hub_id = settings.hub_base_model
    base = _shapes(hub_id, settings)
    width = lora_hidden_size(lora)
    wrong = misfits(lora, base)
    if not wrong:
        return MadeFor(hub_id, hub_id, width)
    if not misfits(lora, drawing_shapes()) or not misfits(lora, tiny_shapes()):  # either tiny model (tiny mode)
        return MadeFor("", TINY, width)
    raise PublishError(_does_not_fit(name, lora, base, hub_id, wrong))


def check_card_base(name: str, lora: LoraSet, card: dict[str, Any], settings: Settings) -> None:
    """Refuse a card whose `base_model` (one id or a list) names a base the LoRA does not fit whole.

    Raises:
        PublishError: a named base it does not fit, or one whose configs cannot be read.
    """
    named = card.get("base_model")
    for hub_id in [named] if isinstance(named, str) else list(named or []):
        if not isinstance(hub_id, str) or not hub_id.strip():
            raise PublishError(f"The card's base_model {hub_id!r} is not a Hub model id; write one like 'black-forest-labs/FLUX.1-dev'.")
        base = _shapes(hub_id.strip(), settings)
        if base.note:
            raise PublishError(
                f"The card names {hub_id} as the base model, whose configs could not be read to check that {name} "
                "fits it; name a base model whose configs are on the Hub, or remove base_model from the card."
            )
        wrong = misfits(lora, base)
        if wrong:
            raise PublishError(_does_not_fit(name, lora, base, hub_id, wrong) + " Or remove base_model from the card.")


def _shapes(hub_id: str, settings: Settings) -> BaseShapes:
    """The module shapes of `hub_id`: a known base, else its configs (as the app reads its own base)."""
    known = known_base(hub_id)
    if known is not None:
        return known
    return current_base(dataclasses.replace(settings, base_model=hub_id))


def _does_not_fit(name: str, lora: LoraSet, base: BaseShapes, hub_id: str, wrong: list[str]) -> str:
    module = lora.modules.get(wrong[0])
    shape = base.modules.get(wrong[0])
    detail = (
        f"{wrong[0]} is {module.out_features}x{module.in_features} in the LoRA and {shape[0]}x{shape[1]} in {hub_id}"
        if module is not None and shape is not None
        else f"{wrong[0]} has no module of that name in {hub_id}"
    )
    width = lora_hidden_size(lora)
    made = f" It was made for a model {width} wide ({hub_id} is {base.hidden_size} wide)." if width and width != base.hidden_size else ""
    return (
        f"{name} does not fit {hub_id}: {len(wrong)} of its {len(lora.modules)} modules do not ({detail}).{made} "
        f"Publish it from a LoRA Space that runs the base model it was made for."
    )
