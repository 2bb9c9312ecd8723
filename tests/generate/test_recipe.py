"""Recipes as A1111/Forge parameters text, JSON and PNG chunks (lora_space.generate.recipe)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_space.core.errors import PromptError
from lora_space.generate.recipe import (
    LoraRef,
    Recipe,
    parse_parameters,
    read_png_recipe,
    recipe_from_json,
    recipe_from_parameters,
    recipe_to_json,
    save_png,
    to_parameters,
)


def full_recipe(**changes) -> Recipe:
    values = dict(
        prompt="wtrclr, portrait of a woman in a garden",
        negative_prompt="blurry, lowres",
        steps=28,
        guidance=3.5,
        true_cfg=1.0,
        seed=1234567890123,
        width=832,
        height=1216,
        model="black-forest-labs/FLUX.1-dev",
        loras=(
            LoraRef("watercolor_style", 0.8, source="watercolor_style", trigger_words=("wtrclr",)),
            LoraRef("user/eyes/eyes_v2.safetensors", -0.35, source="user/eyes", revision="a" * 40),
            LoraRef("Detail Tweaker (v2)", 0.0001),
        ),
    )
    values.update(changes)
    return Recipe(**values)


def test_parameters_look_like_forge():
    text = to_parameters(full_recipe())
    assert text.splitlines() == [
        "wtrclr, portrait of a woman in a garden <lora:watercolor_style:0.8> "
        "<lora:user/eyes/eyes_v2.safetensors:-0.35> <lora:Detail Tweaker (v2):0.0001>",
        "Negative prompt: blurry, lowres",
        "Steps: 28, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, "
        "Seed: 1234567890123, Size: 832x1216, Model: black-forest-labs/FLUX.1-dev",
    ]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"negative_prompt": ""},
        {"prompt": "", "loras": ()},
        {"prompt": "line one\nline two, with: colon"},
        {"negative_prompt": "multi\nline negative"},
        {"model": "C:\\models\\flux, dev"},
        {"model": ' "quoted" ', "sampler": "Euler a", "schedule": "Beta"},
        {"model": ""},
        {"guidance": 0.1 + 0.2, "true_cfg": 4.0, "seed": -1},
        {"prompt": "naïve café ✨"},
    ],
)
def test_parameters_round_trip_exactly(changes):
    recipe = full_recipe(**changes)
    again = recipe_from_parameters(to_parameters(recipe))
    plain = [LoraRef(lora.name, lora.strength) for lora in recipe.loras]
    assert again == Recipe(**{**recipe.to_dict(), "loras": plain})


def test_parse_parameters_returns_fields_loras_and_extra():
    parsed = parse_parameters(to_parameters(full_recipe()) + ', Version: f2.0.1v1.10.1, Lora hashes: "a: 1, b: 2"')
    assert parsed["prompt"] == "wtrclr, portrait of a woman in a garden"
    assert parsed["negative_prompt"] == "blurry, lowres"
    assert parsed["loras"][1] == {"name": "user/eyes/eyes_v2.safetensors", "strength": -0.35}
    assert (parsed["steps"], parsed["width"], parsed["height"], parsed["guidance"]) == (28, 832, 1216, 3.5)
    assert parsed["extra"] == {"Version": "f2.0.1v1.10.1", "Lora hashes": "a: 1, b: 2"}


def test_parse_a1111_text_with_tags_inside_the_prompt():
    text = "a <lora:x:0.5> cat\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 512x768"
    parsed = parse_parameters(text)
    assert parsed["prompt"] == "a cat"
    assert parsed["true_cfg"] == 7.0 and "guidance" not in parsed
    recipe = recipe_from_parameters(text)
    assert recipe.guidance == Recipe("").guidance and recipe.loras == (LoraRef("x", 0.5),)


def test_prompt_without_settings_line():
    assert parse_parameters("just a prompt")["prompt"] == "just a prompt"


def test_bad_numbers_and_tags_in_parameters_are_named():
    with pytest.raises(PromptError, match="'Steps: many'"):
        parse_parameters("p\nSteps: many, Sampler: Euler, Seed: 1")
    with pytest.raises(PromptError, match="'<lora:x:abc>'"):
        parse_parameters("p <lora:x:abc>\nSteps: 2, Sampler: Euler, Seed: 1")


def test_json_round_trip_keeps_sources_revisions_and_trigger_words():
    recipe = full_recipe()
    text = recipe_to_json(recipe)
    assert json.loads(text)["format"] == "lora-space-recipe"
    assert recipe_from_json(text) == recipe


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prompt": "x", "colour": "red"}, "unknown keys ['colour']"),
        ({"negative_prompt": "x"}, "lacks ['prompt']"),
        ({"prompt": "x", "steps": "20"}, "'steps' must be a whole number"),
        ({"prompt": "x", "steps": True}, "'steps' must be a whole number"),
        ({"prompt": "x", "guidance": "high"}, "'guidance' must be a number"),
        ({"prompt": "x", "loras": [{"name": "a", "weight": 1}]}, "LoRA 1 of the recipe has unknown keys ['weight']"),
        ({"prompt": "x", "loras": [{"strength": 1}]}, "LoRA 1 of the recipe lacks ['name']"),
        ({"prompt": "x", "loras": ["a"]}, "LoRA 1 of the recipe must be a JSON object"),
        ({"prompt": "x", "loras": [{"name": "a", "trigger_words": [1]}]}, "list of strings"),
        ({"prompt": "x", "loras": [{"name": "a", "strength": 9}]}, "outside -2 to 3"),
        ({"prompt": "x", "loras": [{"name": "a:b"}]}, "cannot hold"),
        ({"format": "other", "prompt": "x"}, "not a lora-space-recipe version 1"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_recipe_json_is_refused_with_the_reason(data, message):
    with pytest.raises(PromptError) as caught:
        recipe_from_json(json.dumps(data))
    assert message in str(caught.value)


def test_not_json():
    with pytest.raises(PromptError, match="not valid JSON"):
        recipe_from_json("{")


def test_png_chunk_round_trip(tmp_path: Path):
    recipe = full_recipe()
    path = save_png(Image.new("RGB", (16, 16), "red"), tmp_path / "out.png", recipe)
    with Image.open(path) as image:
        parameters = image.text["parameters"]
    assert parameters == to_parameters(recipe)
    assert parse_parameters(parameters)["seed"] == recipe.seed
    assert Recipe.from_dict(read_png_recipe(path)) == recipe
    assert "path" not in json.dumps(read_png_recipe(path))


def test_png_from_forge_has_only_parameters(tmp_path: Path):
    info = PngInfo()
    info.add_text(
        "parameters",
        "a cat <lora:ink:0.7>\nSteps: 20, Sampler: Euler, Schedule type: Simple, "
        "CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 7, Size: 896x1152, Model: flux1-dev-fp8",
    )
    path = tmp_path / "forge.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    data = read_png_recipe(path)
    assert (data["prompt"], data["seed"], data["width"], data["model"]) == ("a cat", 7, 896, "flux1-dev-fp8")
    assert data["loras"] == [{"name": "ink", "strength": 0.7, "source": "", "revision": "", "trigger_words": [], "hash": ""}]


def test_png_without_parameters_or_not_a_png(tmp_path: Path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(PromptError, match="holds no generation parameters"):
        read_png_recipe(plain)
    text = tmp_path / "x.png"
    text.write_text("hello")
    with pytest.raises(PromptError, match="not a readable PNG"):
        read_png_recipe(text)


def test_loras_may_be_given_as_name_strength_pairs():
    recipe = Recipe("a cat", loras=[("ink", 0.7), ("user/repo", 1.0)])
    assert recipe.loras == (LoraRef("ink", 0.7), LoraRef("user/repo", 1.0))
    with pytest.raises(PromptError, match="outside -2 to 3"):
        Recipe("a cat", loras=[("ink", 7.0)])


# -- hostile recipes (issue 14, hole 1): bounded text, linear parsing, a deadline ----------------

HOSTILE_LINES = {  # 16,000 characters each, a line without the ':' A1111's pattern looks for
    "words": "a " * 8000,  # 1.1 s in A1111's pattern (quadratic), on this machine
    "one word": "a" * 16000,  # 1.3 s
    "spaces": "a" + " " * 15998 + ",",  # 2.5 s
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(HOSTILE_LINES))
def test_parameters_are_read_in_linear_time(name):
    text = HOSTILE_LINES[name]
    started = time.perf_counter()
    parsed = parse_parameters(text)
    assert time.perf_counter() - started < 0.5  # about 10 ms; A1111's pattern took 1.1 to 2.5 s
    assert parsed["prompt"] == text.strip() and parsed["extra"] == {}


def test_parameters_longer_than_any_tool_writes_are_refused_with_the_limit():
    with pytest.raises(PromptError, match="16,001 characters long; .* at most 16,000 are read"):
        parse_parameters("a" * 16_001)
    assert parse_parameters("a" * 16_000)["prompt"] == "a" * 16_000


@pytest.mark.timeout(60)  # the old reader parsed this PNG for hours
def test_a_one_kilobyte_png_with_a_million_character_recipe_is_refused_at_once(tmp_path: Path):
    info = PngInfo()
    info.add_text("parameters", "a " * 524_000, zip=True)  # 1,048,000 characters, deflated
    path = tmp_path / "bomb.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert path.stat().st_size < 1500
    started = time.perf_counter()
    with pytest.raises(PromptError, match="'bomb.png' holds a 'parameters' text of more than 64 KB"):
        read_png_recipe(path)
    assert time.perf_counter() - started < 1


def test_a_recipe_is_read_from_every_kind_of_png_text_chunk(tmp_path: Path):
    text = to_parameters(full_recipe(prompt="ünïcode ✓ portrait"))
    for kind, add in {
        "tEXt": lambda info: info.add_text("parameters", to_parameters(full_recipe())),
        "zTXt": lambda info: info.add_text("parameters", to_parameters(full_recipe()), zip=True),
        "iTXt": lambda info: info.add_itxt("parameters", text, zip=False),
        "compressed iTXt": lambda info: info.add_itxt("parameters", text, zip=True),
    }.items():
        info = PngInfo()
        add(info)
        path = tmp_path / f"{kind}.png"
        Image.new("RGB", (8, 8)).save(path, pnginfo=info)
        expected = "ünïcode ✓ portrait" if "iTXt" in kind else full_recipe().prompt
        assert read_png_recipe(path)["prompt"] == expected, kind


def test_reading_a_recipe_never_decodes_the_pixels(tmp_path: Path):
    """A PNG's text is read from its chunks alone: pixels that would take long to decode (a
    decompression bomb) or cannot be decoded are never touched."""
    path = save_png(Image.new("RGB", (64, 64), "red"), tmp_path / "out.png", full_recipe())
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start : start + 16] = b"\xff" * 16  # the pixel data no longer inflates
    broken = tmp_path / "broken-pixels.png"
    broken.write_bytes(bytes(data))
    with pytest.raises(OSError), Image.open(broken) as image:
        image.load()
    assert Recipe.from_dict(read_png_recipe(broken)) == full_recipe()


def test_a_parse_past_its_deadline_is_stopped_with_a_clear_message():
    from lora_space.core import timebox

    with pytest.raises(PromptError, match="The parameters text of 'x.png' took longer than 0.001 s to read and was given up"):
        timebox.run("lora_space.generate.parameters:parse_parameters", "a cat", seconds=0.001, what="The parameters text of 'x.png'")
    with pytest.raises(PromptError, match="is not closed"):  # the worker's own errors come back as they were
        timebox.run("lora_space.generate.parameters:parse_parameters", "a <lora:x", seconds=30, what="it")
    assert timebox.run("lora_space.generate.parameters:parse_parameters", "a cat, ünï", seconds=30, what="it")["prompt"] == "a cat, ünï"


def test_recipe_files_are_bounded(tmp_path: Path):
    from lora_space.generate.recipe import read_recipe_file

    path = tmp_path / "recipe.json"
    path.write_text(recipe_to_json(full_recipe()))
    assert read_recipe_file(path) == full_recipe()
    path.write_text(" " * 70_000 + recipe_to_json(full_recipe()))
    with pytest.raises(PromptError, match="larger than 64 KB"):
        read_recipe_file(path)
    path.write_text("[" * 30_000 + "]" * 30_000)
    with pytest.raises(PromptError, match="nested too deeply"):
        read_recipe_file(path)
