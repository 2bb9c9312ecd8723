"""Hardening (hole 5, ownership): on a Space one visitor's LoRAs never reach another's images."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lora_space.core.errors import LoraFileError
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.generate.engine import Engine
from lora_space.generate.request import Options
from lora_space.visitors.owners import Visitor
from lora_space.service import LoraSpace
from tests.lora_factory import write_lora

ALICE, BOB = Visitor("hub", "alice"), Visitor("session", "b" * 32)
TINY = Options(seed=2, steps=2, width=64, height=64)


@pytest.fixture
def space(settings) -> LoraSpace:
    write_lora(settings.lora_dir / "detailed_eyes.safetensors", 1)
    (settings.lora_dir / "detailed_eyes.txt").write_text("sharpeyes")
    return LoraSpace(replace(settings, on_space=True), Engine(build_tiny_pipeline()))


def test_a_visitor_can_neither_shadow_a_shared_name_nor_reach_another_visitors_prompt(space, tmp_path):
    claim = write_lora(tmp_path / "detailed_eyes.safetensors", 2)
    with pytest.raises(LoraFileError, match="shared library already has"):
        space.add_lora(claim, visitor=ALICE, trigger_words=["evilword"])
    mine = write_lora(tmp_path / "my_style.safetensors", 3)
    space.add_lora(mine, visitor=ALICE, trigger_words=["evilword"])
    assert not (space.settings.lora_dir / "my_style.safetensors").exists()  # the shared library is unchanged
    # Alice's LoRA works for Alice, with her trigger word.
    assert space.generate("a cat <lora:my_style:0.5>", [], TINY, visitor=ALICE).metadata["prompt"] == "evilword, a cat"
    # Bob cannot name it, and the shared name gives him the shared LoRA and its own trigger word.
    with pytest.raises(LoraFileError, match="No LoRA named 'my_style'"):
        space.generate("a cat <lora:my_style:0.5>", [], TINY, visitor=BOB)
    output = space.generate("a cat <lora:detailed_eyes:0.5>", [], TINY, visitor=BOB)
    assert output.metadata["prompt"] == "sharpeyes, a cat" and "evilword" not in str(output.metadata)
    assert {item["name"] for item in space.list_loras(BOB)} == {"detailed_eyes"}
