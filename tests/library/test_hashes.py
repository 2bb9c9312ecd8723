"""Linkable recipes: A1111's `Lora hashes` in every image, and recipes that find LoRAs by hash."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_space.generate.recipe import (
    LoraRef,
    Recipe,
    parse_parameters,
    read_png_recipe,
    recipe_from_json,
    recipe_from_parameters,
    to_parameters,
)
from lora_space.library.hashes import HashCache, lora_file_hash
from lora_space.service import LoraSpace, Options
from lora_space.visitors.owners import Visitor
from tests.lora_factory import write_lora

TINY = Options(seed=5, steps=2, width=64, height=64)


def a1111_lora_hash(path: Path) -> str:
    """sd-webui-additional-networks' hash, from the bytes: SHA-256 of all that follows the header."""
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header_length :]).hexdigest()[:12]


def a1111_settings_line(line: str) -> dict[str, str]:
    """A1111's grammar for the last line: `Key: value` pairs joined by ', ', a value quoted as a JSON
    string when it holds ',', ':' or '"', or a raw JSON object as the Civitai extension writes
    `Hashes`. Fails on anything else left over."""
    pairs, rest = {}, line
    pattern = re.compile(r'\s*([A-Za-z][\w \-/]*): ("(?:\\.|[^\\"])*"|\{[^{}]*\}|[^,"{]*)(,|$)')
    while rest:
        match = pattern.match(rest)
        assert match, f"not A1111 grammar at {rest!r}"
        key, value, _ = match.groups()
        pairs[key] = json.loads(value) if value.startswith(('"', "{")) else value
        rest = rest[match.end() :]
    return pairs


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture
def space(settings, make_space) -> LoraSpace:
    write_lora(settings.lora_dir / "ink.safetensors", 1, metadata={"ss_output_name": "ink"})
    write_lora(settings.lora_dir / "styles" / "film, grain.safetensors", 2, rank=2)
    return make_space()


MIX = [{"source": "ink", "strength": 0.7}, {"source": "film, grain", "strength": -0.3}]


def test_an_images_lora_hashes_are_a1111s(space: LoraSpace) -> None:
    output = space.generate("a harbour", MIX, TINY)
    text = Image.open(output.files[0]).text["parameters"]
    *prompt_lines, last = text.split("\n")
    settings_line = a1111_settings_line(last)
    ink = a1111_lora_hash(space.settings.lora_dir / "ink.safetensors")
    film = a1111_lora_hash(space.settings.lora_dir / "styles" / "film, grain.safetensors")
    # A1111 writes the name without ':' and ',' (it would break the list), then ': ' and the hash.
    assert settings_line["Lora hashes"] == f"ink: {ink}, film grain: {film}"
    # The Civitai extension's form follows, the names as tagged (sd-parsers reads only this one).
    assert settings_line["Hashes"] == {"lora:ink": ink, "lora:film, grain": film}
    assert list(settings_line)[-3:] == ["Model", "Lora hashes", "Hashes"] and "Model hash" not in settings_line  # tiny is no file
    assert prompt_lines[0].endswith("<lora:ink:0.7> <lora:film, grain:-0.3>")
    # The repo's parser reads it back, hashes attached to their LoRAs; the JSON chunk has them too.
    parsed = parse_parameters(text)
    assert [(lora["name"], lora["hash"]) for lora in parsed["loras"]] == [("ink", ink), ("film, grain", film)]
    assert [lora["hash"] for lora in read_png_recipe(output.files[0])["loras"]] == [ink, film]
    assert [lora["hash"] for lora in output.metadata["loras"]] == [ink, film]


def test_sd_parsers_reads_the_civitai_hashes_and_our_parser_reads_either_form(space: LoraSpace) -> None:
    from sd_parsers import ParserManager

    output = space.generate("a harbour", MIX, TINY)
    ink = a1111_lora_hash(space.settings.lora_dir / "ink.safetensors")
    film = a1111_lora_hash(space.settings.lora_dir / "styles" / "film, grain.safetensors")
    info = ParserManager().parse(output.files[0])  # a reader nobody here wrote
    assert info.metadata["Hashes"] == {"lora:ink": ink, "lora:film, grain": film}
    (sampler,) = info.samplers
    assert sampler.name == "Euler" and sampler.parameters["seed"] == "5" and sampler.model.name == "tiny-random"
    assert str(sampler.prompts[0]).endswith("<lora:ink:0.7> <lora:film, grain:-0.3>")
    # Another tool's text with the Civitai form only (and a name with braces): our parser finds the hashes too.
    other = ('a cat <lora:ink:0.8> <lora:odd{name}:0.5>\nSteps: 20, Sampler: Euler, CFG scale: 1, Seed: 3, Size: 64x64, '
             'Hashes: {"model": "0123abcd45", "lora:ink": "ABCDEF012345", "lora:odd\\u007bname\\u007d": "0123456789ab"}, Version: f2')
    parsed = parse_parameters(other)
    assert [(lora["name"], lora.get("hash")) for lora in parsed["loras"]] == [("ink", "abcdef012345"), ("odd{name}", "0123456789ab")]
    assert parsed["extra"] == {"Version": "f2"} and parsed["seed"] == 3  # the JSON leaves no stray keys
    written = to_parameters(Recipe("a cat", loras=(LoraRef("odd{name}", 0.5, hash="0123456789ab"),)))
    assert ParserManager().parse(_png_with(written)).metadata["Hashes"] == {"lora:odd{name}": "0123456789ab"}


def _png_with(parameters: str) -> io.BytesIO:
    """A PNG holding `parameters` as A1111 writes it."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    buffer.seek(0)
    return buffer


def test_the_hash_skips_the_header_so_metadata_edits_keep_it(tmp_path: Path) -> None:
    first = write_lora(tmp_path / "a.safetensors", 3, metadata={"note": "one"})
    second = write_lora(tmp_path / "b.safetensors", 3, metadata={"note": "a much longer note that moves the data"})
    assert first.read_bytes() != second.read_bytes()
    assert lora_file_hash(first) == lora_file_hash(second) and lora_file_hash(first)[:12] == a1111_lora_hash(first)


def test_hashes_are_computed_once_per_file_and_kept_on_disk(tmp_path: Path) -> None:
    lora = write_lora(tmp_path / "a.safetensors", 4)
    cache_file = tmp_path / "data" / "hashes.json"
    real = HashCache(cache_file).lora_hash(lora)
    entries = json.loads(cache_file.read_text())
    (key,) = entries
    assert entries[key]["sha256"] == real and entries[key]["size"] == lora.stat().st_size
    # A fresh cache (a restarted app) answers from the file: a value planted there is what it returns.
    entries[key]["sha256"] = "f" * 64
    cache_file.write_text(json.dumps(entries))
    assert HashCache(cache_file).lora_hash(lora) == "f" * 64
    # A changed file is hashed again.
    write_lora(lora, 5)
    os.utime(lora, ns=(lora.stat().st_atime_ns, lora.stat().st_mtime_ns + 10**9))
    assert HashCache(cache_file).lora_hash(lora) == lora_file_hash(lora) != real


def test_a_recipe_with_renamed_loras_finds_them_by_hash(space: LoraSpace) -> None:
    first = space.generate("a harbour", MIX, TINY)
    recipe = recipe_from_json(space.save_recipe(first.metadata).read_text())
    assert space.link_recipe(recipe) == (recipe, [])  # names and contents agree: nothing to change
    # The user renames both files; by name the recipe would find nothing.
    library = space.settings.lora_dir
    (library / "ink.safetensors").rename(library / "ink_v2.safetensors")
    (library / "styles" / "film, grain.safetensors").rename(library / "old_film.safetensors")
    linked, notes = space.link_recipe(recipe)
    assert [(lora.name, lora.source, lora.strength) for lora in linked.loras] == [("ink_v2", "ink_v2", 0.7), ("old_film", "old_film", -0.3)]
    assert len(notes) == 2 and "ink_v2" in notes[0]
    again = space.generate(linked.prompt, [{"source": lora.source, "strength": lora.strength} for lora in linked.loras], TINY)
    assert np.abs(pixels(again.files[0]) - pixels(first.files[0])).max() <= 1


def test_a_forge_png_finds_library_loras_by_hash(space: LoraSpace, tmp_path: Path) -> None:
    ink = a1111_lora_hash(space.settings.lora_dir / "ink.safetensors")
    info = PngInfo()
    info.add_text(
        "parameters",
        "a cat <lora:inkstyle_v1:0.6> <lora:unknown:0.5>\nSteps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, "
        f'Distilled CFG Scale: 3.5, Seed: 7, Size: 896x1152, Model hash: 0123abcd45, Model: flux1-dev-fp8, '
        f'Lora hashes: "inkstyle_v1: {ink}, unknown: 00000000aaaa", Version: f2.0.1v1.10.1',
    )
    path = tmp_path / "forge.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    recipe = Recipe.from_dict(read_png_recipe(path))
    assert recipe.model_hash == "0123abcd45"
    linked, notes = space.link_recipe(recipe)
    assert [(lora.name, lora.strength) for lora in linked.loras] == [("ink", 0.6), ("unknown", 0.5)]  # no file has that hash
    assert notes == [f"'inkstyle_v1' was found in the library by its hash {ink} as 'ink'."]


def test_a_visitor_finds_only_loras_they_may_use_by_hash(settings, tmp_path: Path) -> None:
    import dataclasses

    space = LoraSpace(dataclasses.replace(settings, on_space=True), engine=None)
    alice, bob = Visitor("hub", "alice"), Visitor("hub", "bob")
    entry = space.add_lora(write_lora(tmp_path / "secret.safetensors", 6), visitor=alice)
    recipe = Recipe("x", loras=(LoraRef("renamed", 0.8, hash=a1111_lora_hash(entry.path)),))
    assert space.link_recipe(recipe, visitor=alice)[0].loras[0].name == "secret"
    assert space.link_recipe(recipe, visitor=bob)[0].loras[0].name == "renamed"


def test_model_hash_is_written_before_the_model_and_parsed_back() -> None:
    recipe = Recipe("a cat", model="flux1-dev.safetensors", model_hash="0123abcd45", loras=(LoraRef("ink", 0.8, hash="abcdef012345"),))
    text = to_parameters(recipe)
    settings_line = a1111_settings_line(text.split("\n")[-1])
    assert list(settings_line)[-4:] == ["Model hash", "Model", "Lora hashes", "Hashes"]
    assert (settings_line["Model hash"], settings_line["Lora hashes"]) == ("0123abcd45", "ink: abcdef012345")
    assert settings_line["Hashes"] == {"model": "0123abcd45", "lora:ink": "abcdef012345"}
    assert recipe_from_parameters(text) == recipe
