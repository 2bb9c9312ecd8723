"""The local LoRA library: scan, formats, trigger words, uploads (lora_space.library.store)."""

from __future__ import annotations

import json
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lora_space.core.errors import LoraFileError, UnsafeFileError
from lora_space.library.store import (
    add_to_library,
    find_entry,
    guess_format,
    scan_library,
    write_sidecar,
)

DIFFUSERS_KEYS = ["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"]


def make_lora(path: Path, keys=DIFFUSERS_KEYS, metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: np.ones((4, 8), dtype=np.float32) for key in keys}, str(path), metadata=metadata)
    return path


@pytest.fixture
def lora_dir(settings) -> Path:
    return settings.lora_dir


def test_scan_subfolders_names_sidecars_metadata_and_invalid_files(lora_dir):
    make_lora(lora_dir / "watercolor_style.safetensors")
    (lora_dir / "watercolor_style.txt").write_text("wtrclr, watercolor\npainting\n")
    make_lora(
        lora_dir / "eyes" / "detailed_eyes.safetensors", ["lora_unet_double_blocks_0_img_attn_proj.lora_down.weight"]
    )
    (lora_dir / "eyes" / "detailed_eyes.json").write_text(json.dumps({"trigger_word": "d3tail"}))
    make_lora(
        lora_dir / "a" / "dup.safetensors", ["base_model.model.x.lora_A.weight"], {"trigger_words": '["tok1", "tok2"]'}
    )
    make_lora(
        lora_dir / "b" / "dup.safetensors",
        ["diffusion_model.double_blocks.0.img_attn.proj.lora_A.weight"],
        {"modelspec.trigger_phrase": "phrase one"},
    )
    make_lora(
        lora_dir / "xl.safetensors",
        ["double_blocks.0.processor.proj_lora1.down.weight"],
        {"instance_prompt": "sks dog"},
    )
    (lora_dir / "short.safetensors").write_bytes(b"\x01\x02")
    (lora_dir / "huge.safetensors").write_bytes(struct.pack("<Q", 200 * 1024 * 1024) + b"{}")
    (lora_dir / "notes.txt").write_text("not a lora")
    make_lora(lora_dir / ".hidden" / "skip.safetensors")

    entries = scan_library(lora_dir)
    by_name = {entry.name: entry for entry in entries}
    assert [entry.name for entry in entries] == [
        "a/dup",
        "b/dup",
        "detailed_eyes",
        "huge",
        "short",
        "watercolor_style",
        "xl",
    ]
    assert by_name["watercolor_style"].trigger_words == ("wtrclr", "watercolor", "painting")
    assert by_name["watercolor_style"].format == "diffusers"
    assert by_name["detailed_eyes"].location == "eyes/detailed_eyes.safetensors"
    assert by_name["detailed_eyes"].format == "kohya"
    assert by_name["detailed_eyes"].trigger_words == ("d3tail",)
    assert (by_name["a/dup"].format, by_name["a/dup"].trigger_words) == ("peft", ("tok1", "tok2"))
    assert (by_name["b/dup"].format, by_name["b/dup"].trigger_words) == ("comfyui", ("phrase one",))
    assert (by_name["xl"].format, by_name["xl"].trigger_words) == ("xlabs", ("sks dog",))
    for bad in ("short", "huge"):
        assert by_name[bad].format == "invalid"
        assert by_name[bad].problem and f"{bad}.safetensors" in by_name[bad].problem
    assert by_name["watercolor_style"].problem is None
    assert by_name["watercolor_style"].size_bytes == (lora_dir / "watercolor_style.safetensors").stat().st_size


def test_to_dict_has_the_api_keys_and_no_path(lora_dir):
    make_lora(lora_dir / "style.safetensors")
    (entry,) = scan_library(lora_dir)
    data = entry.to_dict()
    assert "path" not in data
    assert set(data) >= {"name", "location", "size_bytes", "format", "trigger_words"}
    assert json.loads(json.dumps(data)) == data


def test_sidecar_text_wins_over_metadata_and_bad_json_is_a_problem(lora_dir):
    make_lora(lora_dir / "meta.safetensors", metadata={"trigger_word": "from_meta"})
    make_lora(lora_dir / "broken.safetensors", metadata={"trigger_word": "from_meta"})
    (lora_dir / "broken.json").write_text("{not json")
    entries = {entry.name: entry for entry in scan_library(lora_dir)}
    assert entries["meta"].trigger_words == ("from_meta",)
    assert entries["broken"].format == "diffusers" and "sidecar" in entries["broken"].problem
    write_sidecar(lora_dir, "meta", ["tok", "another word"])
    assert find_entry(lora_dir, "meta").trigger_words == ("tok", "another word")
    with pytest.raises(LoraFileError, match="holds a comma"):
        write_sidecar(lora_dir, "meta", ["a, b"])
    with pytest.raises(LoraFileError, match="no LoRA named 'nope'"):
        write_sidecar(lora_dir, "nope", ["a"])


def test_missing_library_is_empty(tmp_path):
    assert scan_library(tmp_path / "nope") == []
    assert find_entry(tmp_path / "nope", "x") is None


def test_find_entry_by_name_or_location(lora_dir):
    make_lora(lora_dir / "styles" / "ink.safetensors")
    for key in ("ink", "styles/ink", "styles/ink.safetensors"):
        assert find_entry(lora_dir, key).name == "ink"
    assert find_entry(lora_dir, "other") is None


def test_guess_format_unknown():
    assert guess_format(["__metadata__", "foo.weight"]) == "unknown"


def test_add_copies_and_keeps_tensors(lora_dir, tmp_path):
    upload = make_lora(tmp_path / "upload" / "my style.safetensors")
    entry = add_to_library(lora_dir, upload)
    assert (entry.name, entry.location, entry.format) == ("my style", "my style.safetensors", "diffusers")
    assert load_file(str(entry.path)).keys() == load_file(str(upload)).keys()
    renamed = add_to_library(lora_dir, upload, name="ink.safetensors")
    assert renamed.name == "ink"
    assert not [path for path in lora_dir.iterdir() if path.name.startswith(".")]


def test_add_refuses_existing_name_unless_overwrite(lora_dir, tmp_path):
    make_lora(lora_dir / "styles" / "ink.safetensors")
    upload = make_lora(tmp_path / "ink.safetensors", ["lora_unet_x.lora_down.weight"])
    with pytest.raises(LoraFileError, match="already has a LoRA named 'ink'.*overwrite=True"):
        add_to_library(lora_dir, upload)
    entry = add_to_library(lora_dir, upload, overwrite=True)
    assert (entry.location, entry.format) == ("styles/ink.safetensors", "kohya")
    assert [e.name for e in scan_library(lora_dir)] == ["ink"]


def test_add_refuses_a_pickle_renamed_safetensors(lora_dir, tmp_path):
    fake = tmp_path / "evil.safetensors"
    fake.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    with pytest.raises(UnsafeFileError, match="pickle"):
        add_to_library(lora_dir, fake)
    assert scan_library(lora_dir) == []


def test_add_refuses_a_torch_zip_renamed_safetensors(lora_dir, tmp_path):
    torch = pytest.importorskip("torch")
    fake = tmp_path / "zipped.safetensors"
    torch.save({"w": torch.zeros(2)}, fake)
    with pytest.raises(UnsafeFileError, match="zip"):
        add_to_library(lora_dir, fake)


@pytest.mark.parametrize("filename", ["style.ckpt", "style.pt", "style.bin", "style"])
def test_add_refuses_other_extensions(lora_dir, tmp_path, filename):
    upload = tmp_path / filename
    upload.write_bytes(b"whatever")
    with pytest.raises(LoraFileError, match="not a .safetensors file"):
        add_to_library(lora_dir, upload)


@pytest.mark.parametrize("bad", ["../escape", "sub/name", "..", ".hidden", "a\\b", "", "x" * 101, "a:b"])
def test_add_refuses_bad_names(lora_dir, tmp_path, bad):
    upload = make_lora(tmp_path / "ok.safetensors")
    with pytest.raises(LoraFileError, match="cannot be a library name"):
        add_to_library(lora_dir, upload, name=bad)
    assert not (tmp_path / "escape.safetensors").exists()


def test_add_refuses_damaged_files(lora_dir, tmp_path):
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(LoraFileError, match="truncated"):
        add_to_library(lora_dir, truncated)
    not_json = tmp_path / "nj.safetensors"
    not_json.write_bytes(struct.pack("<Q", 4) + b"abcd")
    with pytest.raises(LoraFileError, match="not a safetensors file"):
        add_to_library(lora_dir, not_json)


def test_paths_may_be_strings_as_gradio_gives_them(lora_dir, tmp_path):
    upload = make_lora(tmp_path / "gradio" / "ink.safetensors")
    entry = add_to_library(str(lora_dir), str(upload))
    assert entry.name == "ink"
    assert [e.name for e in scan_library(str(lora_dir))] == ["ink"]


@pytest.mark.timeout(60)
def test_a_sidecar_or_metadata_of_twenty_thousand_words_is_read_in_milliseconds(lora_dir):
    """Each word was checked against a set rebuilt from every word before it: 15 s for 20,000 words."""
    words = ",".join(f"w{index}" for index in range(20_000))
    make_lora(lora_dir / "many.safetensors", metadata={"trigger_words": words})
    (lora_dir / "sidecar.txt").write_text(words)
    make_lora(lora_dir / "sidecar.safetensors")
    started = time.perf_counter()
    entries = {entry.name: entry for entry in scan_library(lora_dir)}
    assert time.perf_counter() - started < 1
    assert entries["many"].trigger_words == entries["sidecar"].trigger_words == tuple(f"w{index}" for index in range(32))
