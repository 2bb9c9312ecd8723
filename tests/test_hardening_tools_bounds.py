"""Hardening (issue 14, hole 9): the LoRA tools take a turn as generate does, and their work is bounded.

Resize, bake, compare, convert and auto-caption run inside one of the caller's turns (per
visitor and per address, `fairness`); resize, compare and bake estimate their SVD work from the
files' headers and refuse past `LORA_SPACE_MAX_TOOL_WORK` before loading a tensor (a resize of
one rank-3072 module took 44.7 s, so a 2 GiB file is about 40 minutes of CPU); and one file is
one LoRA whatever it is called (bake took the same file twice under two names).
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from safetensors.torch import save_file

from lora_space.errors import LimitError, PromptError
from lora_space.lora.optimize import svd_work
from lora_space.lora.safefile import read_local_header
from lora_space.owners import Visitor
from lora_space.service import LoraSpace
from tests.lora_factory import write_lora
from tests.train_factory import colour_zip

ALICE = Visitor("session", "a" * 32, address="203.0.113.7")


@pytest.fixture
def space(settings):
    """A Space's app (no engine: these calls never generate) with two LoRAs in the shared library."""
    write_lora(settings.lora_dir / "ink.safetensors", 1)
    write_lora(settings.lora_dir / "neon.safetensors", 2)
    return LoraSpace(dataclasses.replace(settings, on_space=True), engine=None)


def test_every_tool_waits_for_a_turn_of_its_visitor_and_address(space, tmp_path):
    preview, _ = space.preview_dataset(colour_zip(tmp_path / "red.zip"), visitor=ALICE)
    calls = {
        "convert": lambda who: space.convert("ink", "kohya", visitor=who),
        "resize": lambda who: space.resize("ink", rank=2, visitor=who),
        "compare": lambda who: space.compare(["ink", "neon"], visitor=who),
        "bake": lambda who: space.bake([{"source": "ink", "strength": 0.5}], visitor=who, name=f"baked_{who.name[:4]}"),
        "auto-caption": lambda who: space.autocaption(preview, visitor=who),
        "dataset preview": lambda who: space.preview_dataset(tmp_path / "red.zip", visitor=who),
    }
    limits = space.settings.limits
    for name, call in calls.items():
        with space.gate.turn(ALICE, limits.max_requests_per_visitor), space.gate.turn(ALICE, limits.max_requests_per_visitor):
            with pytest.raises(LimitError, match="Your session already has 2 requests running"):
                call(ALICE)
        # Fresh visitors from one address: the address's turns run out.
        others = [Visitor("session", f"{index:032x}", address=ALICE.address) for index in range(limits.max_requests_per_address + 1)]
        turns = [space.gate.turn(other, limits.max_requests_per_visitor, address_limit=limits.max_requests_per_address) for other in others[:-1]]
        for turn in turns:
            turn.__enter__()
        try:
            with pytest.raises(LimitError, match="Your address already has"):
                call(others[-1])
        finally:
            for turn in turns:
                turn.__exit__(None, None, None)
    assert space.convert("ink", "kohya", visitor=ALICE).file.exists()  # with its turns back, it runs


def rank_3072_lora(path):
    """One FLUX.1-dev feed-forward module (3072 -> 12288) at rank 3072, bf16: the issue's 44.7-second resize."""
    module = "transformer.transformer_blocks.0.ff.net.0.proj"
    tensors = {f"{module}.lora_A.weight": torch.zeros(3072, 3072, dtype=torch.bfloat16),
               f"{module}.lora_B.weight": torch.zeros(12288, 3072, dtype=torch.bfloat16)}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def test_a_resize_past_the_work_bound_is_refused_from_the_header_at_once(space):
    lora = rank_3072_lora(space.settings.lora_dir / "huge.safetensors")
    work = svd_work(read_local_header(lora))
    assert 170 < work < 180  # billions: (3072 + 12288) x 3072^2 + 3072^3
    started = time.perf_counter()
    with pytest.raises(LimitError, match=r"Resizing huge is about 174 billion operations .* more than the 150 billion"):
        space.resize("huge", rank=16, visitor=ALICE)
    elapsed = time.perf_counter() - started
    print(f"resize of one rank-3072 module ({work:.0f} billion operations) refused in {elapsed * 1000:.0f} ms")
    assert elapsed < 5
    with pytest.raises(LimitError, match="Comparing 2 LoRAs"):
        space.compare(["huge", "ink"], visitor=ALICE)
    with pytest.raises(LimitError, match="Baking 2 LoRAs"):
        space.bake([{"source": "huge", "strength": 1}, {"source": "ink", "strength": 1}], visitor=ALICE)
    assert not (space.settings.data_dir / "outputs").exists() or not any((space.settings.data_dir / "outputs").iterdir())


def test_one_file_under_two_names_is_one_lora(space):
    path = str(space.settings.lora_dir / "ink.safetensors")
    with pytest.raises(PromptError, match="'ink' and .* are the same LoRA file"):
        space.bake([{"source": "ink", "strength": 1}, {"source": path, "strength": 1}], visitor=ALICE)
    with pytest.raises(PromptError, match="same LoRA file"):
        space.compare(["ink", "ink.safetensors"], visitor=ALICE)
    assert not space.list_loras(ALICE)[2:]  # nothing was baked


def test_auto_caption_is_bounded_by_images(space, tmp_path):
    space.settings = dataclasses.replace(space.settings, limits=dataclasses.replace(space.settings.limits, max_caption_images=4))
    preview, _ = space.preview_dataset(colour_zip(tmp_path / "red.zip", count=6), visitor=ALICE)
    with pytest.raises(LimitError, match="has 6 images; auto-captioning writes at most 4"):
        space.autocaption(preview, visitor=ALICE)
