"""LoraSpace on the tiny model: LoRAs from the library, the data folder and a (stand-in) Hub."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_space.core.errors import HubError, LoraFileError, PromptError, UnsafeFileError
from lora_space.generate.recipe import read_png_recipe, recipe_from_json
from lora_space.service import LoraSpace, Options
from tests.hub_standin import isolated_hub
from tests.lora_factory import write_lora

TINY = Options(seed=11, steps=2, width=64, height=64)


@pytest.fixture
def space(online_settings, make_space) -> LoraSpace:
    write_lora(online_settings.lora_dir / "styles" / "ink.safetensors", 1)
    return make_space(online_settings)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_a_hub_lora_is_downloaded_with_its_card_trigger_words(space, hub, tmp_path):
    lora = write_lora(tmp_path / "made.safetensors", 2)
    hub.add_model(
        "alice/wtrclr-flux",
        files={"wtrclr.safetensors": lora, "README.md": "---\nbase_model: black-forest-labs/FLUX.1-dev\ninstance_prompt: wtrclr\n---\n"},
    )
    output = space.generate("a harbour", [{"source": "alice/wtrclr-flux", "strength": 0.9}], TINY)
    assert output.metadata["prompt"] == "wtrclr, a harbour"
    (lora_meta,) = output.metadata["loras"]
    assert lora_meta["source"] == "alice/wtrclr-flux" and len(lora_meta["revision"]) == 40
    recipe = read_png_recipe(output.files[0])
    assert recipe["loras"][0]["revision"] == lora_meta["revision"]
    # The same LoRA from the library gives the same image: the Hub path loads what the file holds.
    (space.settings.lora_dir / "same.safetensors").write_bytes(lora.read_bytes())
    again = space.generate("wtrclr, a harbour", [{"source": "same", "strength": 0.9}], TINY)
    assert np.abs(pixels(again.files[0]) - pixels(output.files[0])).max() <= 1


def test_hub_errors_are_clear(space, hub):
    hub.add_model("alice/gated-lora", files={"x.safetensors": b"..."}, gated="manual")
    with pytest.raises(HubError, match="gated"):
        space.generate("x", [{"source": "alice/gated-lora"}], TINY)
    with pytest.raises(HubError, match="No repo"):
        space.generate("x", [{"source": "alice/nothing-here"}], TINY)
    with pytest.raises(UnsafeFileError, match="pickle"):
        space.generate("x", [{"source": "alice/gated-lora/model.bin"}], TINY)


def test_local_paths_only_inside_the_library_or_data_folder(space, tmp_path):
    outside = write_lora(tmp_path / "elsewhere" / "x.safetensors", 3)
    with pytest.raises(LoraFileError, match="No LoRA named"):
        space.generate("x", [{"source": str(outside)}], TINY)
    inside = write_lora(space.settings.data_dir / "jobs" / "j1" / "final.safetensors", 3)
    output = space.generate("x", [{"source": str(inside), "strength": 0.5}], TINY)
    assert output.metadata["loras"][0]["name"] == "final"


def test_slot_and_tag_for_the_same_lora_is_refused(space):
    with pytest.raises(PromptError, match="given twice"):
        space.generate("x <lora:ink:0.5>", [{"source": "ink", "strength": 0.8}], TINY)


def over_applied(warnings: list[str]) -> list[str]:
    return [warning for warning in warnings if "artifacts" in warning]


def test_the_lessons_combination_is_not_warned_about_and_one_lora_past_1_2_is(space):
    # Part 4 of the lesson, "Artistic Character": strengths 1.0 + 0.8 + 0.6 (2.4 in all) are each in range.
    for seed, name in enumerate(("consistent_character", "fantasy_art_style", "magical_effects"), start=5):
        write_lora(space.settings.lora_dir / f"{name}.safetensors", seed)
    lesson = "Fantasy character illustration <lora:consistent_character:1.0> <lora:fantasy_art_style:0.8> <lora:magical_effects:0.6>"
    output = space.generate(lesson, [], TINY)
    assert [lora["name"] for lora in output.metadata["loras"]] == ["consistent_character", "fantasy_art_style", "magical_effects"]
    assert output.warnings == [] and output.metadata["warnings"] == []
    assert not space.generate("x <lora:ink:0.8> <lora:magical_effects:0.8>", [], TINY).warnings
    # One LoRA past the course's range gets exactly one warning, naming it; the others none.
    heavy = space.generate("x", [{"source": "ink", "strength": 1.6}, {"source": "magical_effects", "strength": 0.6}], TINY)
    assert len(over_applied(heavy.warnings)) == 1 and heavy.metadata["warnings"] == heavy.warnings
    assert "ink is at strength 1.6" in heavy.warnings[0]
    assert not over_applied(space.generate("x <lora:ink:1.2>", [], TINY).warnings)


def test_negative_strengths_count_by_their_size_and_do_not_add_up(space):
    write_lora(space.settings.lora_dir / "bold.safetensors", 4)
    assert not space.generate("x <lora:ink:0.9> <lora:bold:-0.9>", [], TINY).warnings
    (warning,) = over_applied(space.generate("x <lora:ink:-1.5>", [], TINY).warnings)
    assert "ink is at strength -1.5 (in reverse)" in warning


def test_a_saved_recipe_loads_back_and_replays_the_same_image(space):
    first = space.generate("a quiet street <lora:ink:0.7>", [], TINY)
    recipe = recipe_from_json(space.save_recipe(first.metadata).read_text())
    assert recipe.seed == 11 and [(ref.name, ref.strength) for ref in recipe.loras] == [("ink", 0.7)]
    options = dataclasses.replace(TINY, seed=recipe.seed, steps=recipe.steps)
    replay = space.generate(recipe.prompt, [{"source": ref.source, "strength": ref.strength} for ref in recipe.loras], options)
    assert np.abs(pixels(replay.files[0]) - pixels(first.files[0])).max() <= 1  # the replay runs fused


def test_loras_that_fight_over_the_same_layers_are_warned_about(space):
    from safetensors.torch import load_file, save_file

    ink = space.settings.lora_dir / "styles" / "ink.safetensors"
    tensors = load_file(str(ink))
    save_file({key: -value if ".lora_B." in key else value for key, value in tensors.items()}, str(space.settings.lora_dir / "anti_ink.safetensors"))
    fighting = space.generate("x <lora:ink:0.8> <lora:anti_ink:0.6>", [], TINY).warnings
    assert any("opposite directions" in warning and "remove one of them" in warning for warning in fighting)
    assert not any("try " in warning for warning in fighting)  # lowering either only leaves less of both
    # A negative strength turns the pair around: now they overshoot together.
    together = space.generate("x <lora:ink:0.5> <lora:anti_ink:-0.5>", [], TINY).warnings
    assert any("same direction" in warning for warning in together)
    assert not space.generate("x <lora:ink:0.8> <lora:anti_ink:0>", [], TINY).warnings


def test_a_sweep_replaces_the_strength_a_tag_gives_the_swept_lora(space):
    write_lora(space.settings.lora_dir / "bold.safetensors", 4)
    sweep = space.sweep("a pier <lora:ink:0.8> <lora:bold:0.5>", [], "ink", [0.0, 0.8], options=TINY)
    assert [cell.metadata["loras"][-1]["strength"] for cell in sweep.cells] == [0.0, 0.8]
    tagged = space.generate("a pier <lora:ink:0.8> <lora:bold:0.5>", [], TINY)
    assert np.abs(pixels(sweep.cells[1].files[0]) - pixels(tagged.files[0])).max() <= 1
    without = space.generate("a pier <lora:bold:0.5>", [], TINY)
    assert np.abs(pixels(sweep.cells[0].files[0]) - pixels(without.files[0])).max() <= 1


def test_a_hub_lora_above_the_size_limit_is_not_downloaded(space, hub, tmp_path):
    lora = write_lora(tmp_path / "big.safetensors", 2, rank=256)  # ~400 KB, more than one header probe
    hub.add_model("alice/huge-lora", files={"huge.safetensors": lora})
    small = dataclasses.replace(space.settings.limits, max_lora_bytes=lora.stat().st_size - 1)
    space.settings = dataclasses.replace(space.settings, limits=small)
    hub.reset_log()
    with pytest.raises(LoraFileError, match="above the"):
        space.generate("x", [{"source": "alice/huge-lora"}], TINY)
    assert hub.bytes_served("huge.safetensors") < lora.stat().st_size


def test_a_batch_asks_the_hub_about_each_lora_once(space, hub, tmp_path):
    lora = write_lora(tmp_path / "made.safetensors", 2)
    hub.add_model("alice/wtrclr-flux", files={"wtrclr.safetensors": lora, "README.md": "---\ninstance_prompt: wtrclr\n---\n"})
    space.generate("a", [{"source": "alice/wtrclr-flux", "strength": 0.5}], TINY)  # downloads it
    hub.reset_log()
    space.generate("a", [{"source": "alice/wtrclr-flux", "strength": 0.5}], TINY)
    generate_once = len(hub.requests)  # what one call asks once the file is cached
    hub.reset_log()
    output = space.batch(["a", "b", "c"], [{"source": "alice/wtrclr-flux", "strength": 0.5}], TINY)
    assert [result.metadata["prompt"] for result in output.outputs] == ["wtrclr, a", "wtrclr, b", "wtrclr, c"]
    assert len(hub.requests) == generate_once


# No log line holds a token, even at DEBUG (moved from tests/app/test_secrets.py: it runs in process).
TOKEN_A = "hf_aliceSECRETtokenAAAAAAAAAAAAAAAA01"
CARD = "---\nbase_model: black-forest-labs/FLUX.1-dev\ninstance_prompt: privstl\n---\n"


def test_no_log_line_holds_the_token_even_at_debug(settings, make_space, tmp_path, monkeypatch, caplog):
    with isolated_hub(tmp_path, monkeypatch) as hub:
        hub.add_user("alice", token=TOKEN_A)
        hub.add_model("alice/private-style", files={"style.safetensors": write_lora(tmp_path / "p.safetensors", 2), "README.md": CARD}, private=True)
        space = make_space(hf_endpoint=hub.endpoint, hf_offline=False)
        with caplog.at_level(logging.DEBUG):
            output = space.generate("a cat", [{"source": "alice/private-style", "strength": 0.5}], Options(seed=1, steps=2, width=64, height=64), token=TOKEN_A)
            with pytest.raises(Exception) as caught:  # a wrong token: refused, and the message does not echo it
                space.generate("a cat", [{"source": "alice/private-style", "strength": 0.5}], Options(seed=1, steps=2, width=64, height=64), token=TOKEN_A + "x")
    assert caplog.records and TOKEN_A not in caplog.text
    assert TOKEN_A not in str(caught.value)
    assert all(TOKEN_A.encode() not in Path(file).read_bytes() for file in output.files)
