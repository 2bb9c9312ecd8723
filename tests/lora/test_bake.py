"""Bake a blend into one LoRA (lora_space.lora.bake, LoraSpace.bake, /bake_lora) on the tiny model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image
from safetensors.torch import save_file

from lora_space.core.errors import LoraFileError
from lora_space.generate.engine import Engine
from lora_space.library.tools import read_lora_file
from lora_space.lora.bake import BAKE_METADATA, BakePart, bake
from lora_space.lora.export import lora_tensors
from lora_space.lora.safefile import load_lora_file
from lora_space.lora.shapes import known_bases, tiny_shapes
from lora_space.lora.synthetic import random_lora
from lora_space.service import LoraSpace, Options
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.visitors.owners import LOCAL, Visitor
from tests.app_process import running_app
from tests.lora_factory import write_lora

TINY = Options(seed=11, steps=2, width=64, height=64)
INK_MODULES = ("attn.to_q", "attn.to_k", "attn.to_v", "ff.net.0.proj")


def write_mix(lora_dir: Path) -> None:
    """Two LoRAs that overlap on attention only: `ink` (diffusers) and `film` (kohya, alpha 8 at rank 3)."""
    write_lora(lora_dir / "ink.safetensors", 1, rank=4, blocks=("transformer_blocks.0", "transformer_blocks.1"), suffixes=INK_MODULES)
    (lora_dir / "ink.txt").write_text("inkwash")
    base = tiny_shapes().modules
    film = random_lora(
        base,
        rank=3,
        alpha=8.0,
        seed=2,
        scale=0.4,
        modules=[name for name in base if name.startswith("transformer.transformer_blocks.0.attn.") or "single_transformer_blocks.0" in name],
    )
    tensors, metadata, _ = lora_tensors(film, "kohya")
    save_file(tensors, str(lora_dir / "film.safetensors"), metadata=metadata)


@pytest.fixture
def space(settings, make_space) -> LoraSpace:
    write_mix(settings.lora_dir)
    return make_space()  # an engine owns its pipeline's adapters


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


MIX = [{"source": "ink", "strength": 0.8}, {"source": "film", "strength": 0.4}]


def test_an_exact_bake_makes_the_blends_image(space: LoraSpace) -> None:
    blend = space.generate("a lighthouse", MIX, TINY)
    plain = space.generate("a lighthouse", [], TINY)
    result = space.bake(MIX, rank=0, visitor=LOCAL)
    baked = space.generate("a lighthouse", [{"source": result.lora_name, "strength": 1.0}], TINY)
    # The blend changes the image, and the one baked LoRA at strength 1 makes the same image.
    assert np.abs(pixels(blend.files[0]) - pixels(plain.files[0])).max() > 20
    assert np.abs(pixels(baked.files[0]) - pixels(blend.files[0])).max() <= 1
    assert baked.metadata["prompt"] == blend.metadata["prompt"] == "inkwash, a lighthouse"  # trigger words travel
    # Exact: rank is the sum of the ranks where both touch, each part's own rank elsewhere.
    assert result.energy_kept == 1.0 and result.report.exact and result.rank == 4 + 3
    lora = read_lora_file(result.file)
    assert lora.modules["transformer.transformer_blocks.0.attn.to_q"].rank == 7
    assert lora.modules["transformer.transformer_blocks.1.attn.to_q"].rank == 4  # only ink
    assert lora.modules["transformer.single_transformer_blocks.0.proj_mlp"].rank == 3  # only film


def test_the_baked_file_names_its_parts_and_joins_the_library(space: LoraSpace) -> None:
    result = space.bake(MIX, visitor=LOCAL)
    assert result.lora_name == "ink+film"
    entry = {item["name"]: item for item in space.list_loras()}["ink+film"]
    assert entry["format"] == "diffusers" and entry["trigger_words"] == ["inkwash"]
    _, metadata = load_lora_file(space.settings.lora_dir / "ink+film.safetensors")
    recorded = json.loads(metadata[BAKE_METADATA])
    assert [(part["name"], part["strength"]) for part in recorded["parts"]] == [("ink", 0.8), ("film", 0.4)]
    assert all(len(part["hash"]) == 12 for part in recorded["parts"])
    assert json.loads(metadata["lora_space.history"])[-1]["op"] == "bake"
    # A second bake of the same mix gets a new default name; a taken name given on purpose is refused.
    assert space.bake(MIX, visitor=LOCAL).lora_name == "ink+film (2)"
    with pytest.raises(LoraFileError, match="already has a LoRA named 'ink'"):
        space.bake(MIX, name="ink", visitor=LOCAL)


def test_a_lower_rank_keeps_less_energy_and_says_so(space: LoraSpace) -> None:
    result = space.bake(MIX, rank=2, name="ink film r2", visitor=LOCAL)
    assert result.rank == 2 and 0 < result.energy_kept < 1 and not result.report.exact
    assert any("Rank 2 keeps" in warning and "rank 0" in warning for warning in result.warnings)
    exact = read_lora_file(space.bake(MIX, name="ink film exact", visitor=LOCAL).file)
    small = read_lora_file(result.file)
    # Eckart-Young: the energy a module keeps is 1 - |exact - rank 2|^2 / |exact|^2, checked on the dense updates.
    kept = {module.name: module.energy_kept for module in result.report.modules}
    for name, module in exact.modules.items():
        full, approx = module.delta().double(), small.modules[name].delta().double()
        assert small.modules[name].rank <= 2
        share = 1 - float(((full - approx) ** 2).sum() / (full**2).sum())
        assert share == pytest.approx(kept[name], abs=1e-5)
    assert result.energy_kept < min(1.0, max(kept.values()) + 1e-9)


def test_an_exact_bake_of_bf16_loras_is_stored_in_fp32_and_is_the_blends_update(space: LoraSpace) -> None:
    from safetensors.torch import load_file

    for name in ("ink", "film"):  # the same mix, as bf16 files (what trainers and most Hub LoRAs hold)
        path = space.settings.lora_dir / f"{name}.safetensors"
        tensors = {key: value.to(torch.bfloat16) if value.ndim == 2 else value for key, value in load_file(str(path)).items()}
        save_file(tensors, str(space.settings.lora_dir / f"{name}16.safetensors"), metadata=load_lora_file(path)[1])
    mix16 = [{"source": "ink16", "strength": 0.8}, {"source": "film16", "strength": 0.4}]
    exact = space.bake(mix16, rank=0, visitor=LOCAL)
    assert exact.report.exact and {tensor.dtype for tensor in load_file(str(exact.file)).values()} == {torch.float32}
    # The baked update against the blend's, sum_i s_i (alpha_i / r_i) B_i A_i, taken in float64 from the bf16 parts.
    parts = [(read_lora_file(space.settings.lora_dir / f"{item['source']}.safetensors"), item["strength"]) for item in mix16]
    baked = read_lora_file(exact.file)
    errors = []
    for name, module in baked.modules.items():
        blend = sum(strength * part.modules[name].scale * (part.modules[name].B.double() @ part.modules[name].A.double())
                    for part, strength in parts if name in part.modules)
        got = module.scale * (module.B.double() @ module.A.double())
        errors.append(float((got - blend).norm() / blend.norm()))
    assert max(errors) < 1e-6  # bf16 storage gave about 1.6e-3
    # A truncated bake is an approximation: it stays as small as its parts.
    small = space.bake(mix16, rank=2, name="ink film 16 r2", visitor=LOCAL)
    assert not small.report.exact and {tensor.dtype for tensor in load_file(str(small.file)).values()} == {torch.bfloat16}


def test_a_baked_lora_exported_to_kohya_reads_back_bit_for_bit(space: LoraSpace) -> None:
    result = space.bake(MIX, target="kohya", visitor=LOCAL)
    assert result.file.name.endswith("-kohya.safetensors")
    tensors, _ = load_lora_file(result.file)
    assert all(key.startswith("lora_unet_") for key in tensors)
    diffusers = read_lora_file(space.settings.lora_dir / f"{result.lora_name}.safetensors")
    back = read_lora_file(result.file)
    assert set(back.modules) == set(diffusers.modules)
    for name, module in diffusers.modules.items():
        again = back.modules[name]
        assert torch.equal(again.A, module.A) and torch.equal(again.B, module.B), name
        assert again.scale == module.scale == 1.0


def test_a_lora_for_another_base_is_refused_as_in_generate(space: LoraSpace) -> None:
    dev = known_bases()[0]
    other = random_lora(dev.modules, rank=1, seed=3, modules=["transformer.transformer_blocks.0.attn.to_q"])
    tensors, metadata, _ = lora_tensors(other, "diffusers")
    save_file(tensors, str(space.settings.lora_dir / "dev_only.safetensors"), metadata=metadata)
    with pytest.raises(LoraFileError, match="'dev_only' matches no module of the base model"):
        space.bake([{"source": "ink", "strength": 0.8}, {"source": "dev_only", "strength": 0.5}], visitor=LOCAL)
    with pytest.raises(LoraFileError, match="'dev_only' matches no module"):
        space.generate("x", [{"source": "dev_only", "strength": 0.5}], TINY)


def test_bake_checks_its_arguments() -> None:
    ink = BakePart("ink", random_lora(tiny_shapes().modules, rank=2, modules=["transformer.proj_out"]), 0.0)
    with pytest.raises(LoraFileError, match="Every strength is 0"):
        bake([ink], base=tiny_shapes())
    with pytest.raises(LoraFileError, match="rank=-1"):
        bake([dataclasses.replace(ink, strength=1.0)], base=tiny_shapes(), rank=-1)
    with pytest.raises(LoraFileError, match="at least one LoRA"):
        bake([], base=tiny_shapes())


def test_on_a_space_the_bake_joins_the_visitors_own_library(settings) -> None:
    space_settings = dataclasses.replace(settings, on_space=True)
    write_mix(space_settings.lora_dir)
    space = LoraSpace(space_settings, Engine(build_tiny_pipeline()))
    alice, bob = Visitor("hub", "alice"), Visitor("hub", "bob")
    result = space.bake(MIX, visitor=alice)
    assert result.lora_name in {item["name"] for item in space.list_loras(alice)}
    assert result.lora_name not in {item["name"] for item in space.list_loras(bob)}
    assert not (space_settings.lora_dir / f"{result.lora_name}.safetensors").exists()  # the shared library is read-only
    baked = space.generate("a lighthouse", [{"source": result.lora_name, "strength": 1.0}], TINY, visitor=alice)
    blend = space.generate("a lighthouse", MIX, TINY, visitor=bob)
    assert np.abs(pixels(baked.files[0]) - pixels(blend.files[0])).max() <= 1


@pytest.mark.slow  # starts the app
def test_bake_lora_from_gradio_client(tmp_path: Path) -> None:
    write_mix(tmp_path / "loras")
    with running_app(tmp_path) as url:
        client = Client(url, verbose=False)
        result = client.predict(loras=MIX, rank=0, name="", api_name="/bake_lora")
        assert (result["lora_name"], result["rank"], result["energy_kept"]) == ("ink+film", 7, 1.0)
        assert Path(result["lora_file"]).is_file() and read_lora_file(result["lora_file"]).modules
        small = client.predict(loras=MIX, rank=1, name="ink film r1", api_name="/bake_lora")
        assert small["rank"] == 1 and small["energy_kept"] < 1 and small["warnings"]
        names = [item["name"] for item in client.predict(api_name="/list_loras")]
        assert {"ink+film", "ink film r1"} <= set(names)
        with pytest.raises(AppError, match="rank=-2"):
            client.predict(loras=MIX, rank=-2, api_name="/bake_lora")


def test_a_baked_blend_publishes_like_any_library_lora(settings, tmp_path, monkeypatch) -> None:
    from lora_space.publish.publish import PublishRequest, publish
    from tests.hub_standin import isolated_hub

    token = "hf_alice_WRITE_bake_0123456789"
    with isolated_hub(tmp_path, monkeypatch) as hub:
        hub.add_user("alice", token=token)
        space_settings = dataclasses.replace(settings, hf_endpoint=hub.endpoint, hf_offline=False, on_space=True)
        write_mix(space_settings.lora_dir)
        space = LoraSpace(space_settings, Engine(build_tiny_pipeline()))
        alice = Visitor("hub", "alice")
        baked = space.bake(MIX, visitor=alice)
        publish(space, PublishRequest(lora=baked.lora_name, repo_id="alice/ink-film-blend"), token=token, visitor=alice)
        blend = space.generate("a lighthouse", MIX, TINY, visitor=alice)
        fetched = space.generate("a lighthouse", [{"source": "alice/ink-film-blend", "strength": 1.0}], TINY, token=token, visitor=alice)
        assert fetched.metadata["prompt"] == blend.metadata["prompt"]
        assert np.abs(pixels(fetched.files[0]) - pixels(blend.files[0])).max() <= 1
