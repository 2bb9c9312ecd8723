"""LoRA layouts: detection, bit-exact round trips, alpha folding, and images on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_space.core.errors import LoraFileError
from lora_space.lora.export import lora_tensors, save_lora
from lora_space.lora.formats import LoraModule, LoraSet, read_lora, to_diffusers
from lora_space.lora.keymap import detect_format
from lora_space.lora.safefile import load_lora_file
from lora_space.lora.shapes import known_base, tiny_shapes
from lora_space.lora.synthetic import random_lora

RANK, ALPHA = 4, 8.0
DOUBLE_QKV = ["transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_k", "transformer.transformer_blocks.0.attn.to_v"]


@pytest.fixture(scope="module")
def shapes() -> dict[str, tuple[int, int]]:
    return tiny_shapes().modules


@pytest.fixture(scope="module")
def pipe():
    """A pipeline of this module's own: the tests load and delete adapters on it."""
    from lora_space.tiny.model import build_tiny_pipeline

    pipeline = build_tiny_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def render(pipe, lora=None, name: str = "tested", **load_options) -> torch.Tensor:
    """A 2-step 64x64 image with a fixed seed, with `lora` (state dict or folder) loaded alone."""
    if lora is not None:
        pipe.load_lora_weights(lora, adapter_name=name, **load_options)
        assert name in pipe.get_list_adapters().get("transformer", []), "diffusers loaded nothing"
        pipe.set_adapters([name], [1.0])
    try:
        generator = torch.Generator().manual_seed(0)
        return pipe("a cat", num_inference_steps=2, height=64, width=64, generator=generator, output_type="pt").images
    finally:
        if lora is not None:
            pipe.delete_adapters(name)


def _everything(shapes, seed: int = 0) -> LoraSet:
    """A LoRA on every tiny transformer module and two text-encoder modules, rank 4, alpha 8."""
    modules = [name for name in shapes if name.startswith("transformer.")]
    modules += ["text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "text_encoder.text_model.encoder.layers.1.mlp.fc1"]
    return random_lora(shapes, rank=RANK, alpha=ALPHA, modules=modules, seed=seed)


def _files_equal(first: Path, second: Path) -> None:
    a, _ = load_lora_file(first)
    b, _ = load_lora_file(second)
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_detect_format_of_each_layout() -> None:
    assert detect_format(["transformer.x_embedder.lora_A.weight"]) == "diffusers"
    assert detect_format(["base_model.model.x_embedder.lora_A.weight"]) == "peft"
    assert detect_format(["lora_unet_img_in.lora_down.weight", "lora_unet_img_in.alpha"]) == "kohya"
    assert detect_format(["diffusion_model.img_in.lora_down.weight"]) == "comfyui"
    assert detect_format(["double_blocks.0.processor.qkv_lora1.down.weight"]) == "xlabs"
    assert detect_format(["model.layers.0.weight", "something_else"]) == "unknown"


@pytest.mark.parametrize("target", ["kohya", "comfyui"])
def test_diffusers_to_kohya_and_back_is_bit_for_bit(tmp_path: Path, shapes, target: str) -> None:
    original = tmp_path / "original.safetensors"
    save_lora(_everything(shapes), original)
    exported = tmp_path / f"{target}.safetensors"
    save_lora(read_lora(*load_lora_file(original)), exported, target=target)
    back = read_lora(*load_lora_file(exported))
    assert back.format == target and not back.unplaced and not back.warnings
    assert all(module.alpha == ALPHA for module in back.modules.values())
    again = tmp_path / "again.safetensors"
    save_lora(back, again)
    _files_equal(original, again)


def test_sd_scripts_dense_and_split_qkv_files_round_trip(tmp_path: Path) -> None:
    """Foreign kohya files: a dense fused qkv (one shared down) and a block-diagonal one, no metadata."""
    generator = torch.Generator().manual_seed(3)
    up_split = torch.zeros(96, 6)
    for part in range(3):
        up_split[part * 32 : (part + 1) * 32, part * 2 : (part + 1) * 2] = torch.randn(32, 2, generator=generator)
    tensors = {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 32, generator=generator),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(96, 4, generator=generator),
        "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(2.0),
        "lora_unet_double_blocks_1_txt_attn_qkv.lora_down.weight": torch.randn(6, 32, generator=generator),
        "lora_unet_double_blocks_1_txt_attn_qkv.lora_up.weight": up_split,
        "lora_unet_double_blocks_1_txt_attn_qkv.alpha": torch.tensor(3.0),
    }
    lora = read_lora(tensors, {})
    q, k = lora.modules[DOUBLE_QKV[0]], lora.modules[DOUBLE_QKV[1]]
    assert q.A is k.A and q.rank == 4 and q.alpha == 2.0  # dense: the down matrix is shared
    add_q = lora.modules["transformer.transformer_blocks.1.attn.add_q_proj"]
    assert add_q.rank == 2 and add_q.alpha == pytest.approx(1.0)  # split: alpha keeps alpha / rank
    rewritten, _, warnings = lora_tensors(read_lora(*lora_tensors(lora, "kohya")[:2]), "kohya")
    assert not warnings and set(rewritten) == set(tensors)
    for key, value in tensors.items():
        assert torch.equal(rewritten[key], value), key


def test_to_diffusers_folds_alpha_and_prefixes_keys(shapes) -> None:
    lora = random_lora(shapes, rank=RANK, alpha=ALPHA, modules=DOUBLE_QKV + ["transformer.x_embedder"])
    kohya, metadata, _ = lora_tensors(lora, "kohya")
    state_dict, config = to_diffusers(kohya, metadata)
    assert set(state_dict) == {f"{n}.lora_{p}.weight" for n in lora.modules for p in "AB"}
    for name, module in lora.modules.items():
        folded = state_dict[f"{name}.lora_B.weight"] @ state_dict[f"{name}.lora_A.weight"]
        torch.testing.assert_close(folded, module.delta())
    assert config["transformer.r"] == RANK and config["transformer.lora_alpha"] == RANK


def test_raw_peft_keys_are_renamed(shapes) -> None:
    lora = random_lora(shapes, rank=RANK, modules=DOUBLE_QKV)
    tensors = {f"base_model.model.{key.removeprefix('transformer.')}": value for key, value in lora_tensors(lora, "diffusers")[0].items()}
    state_dict, _ = to_diffusers(tensors, {})
    assert all(key.startswith("transformer.transformer_blocks.0.attn.") for key in state_dict)
    assert any("adapter_config.json" in warning for warning in read_lora(tensors).warnings)


def test_xlabs_qkv_shares_its_down_matrix() -> None:
    tensors = {
        "double_blocks.0.processor.qkv_lora1.down.weight": torch.randn(4, 32),
        "double_blocks.0.processor.qkv_lora1.up.weight": torch.randn(96, 4),
        "double_blocks.0.processor.proj_lora1.down.weight": torch.randn(4, 32),
        "double_blocks.0.processor.proj_lora1.up.weight": torch.randn(32, 4),
    }
    lora = read_lora(tensors)
    assert lora.format == "xlabs"
    assert set(lora.modules) == set(DOUBLE_QKV) | {"transformer.transformer_blocks.0.attn.to_out.0"}
    assert all(module.alpha is None and module.scale == 1 for module in lora.modules.values())


def test_unknown_layout_is_refused_for_loading() -> None:
    with pytest.raises(LoraFileError, match="no module"):
        to_diffusers({"model.layers.0.lora.weight": torch.ones(2, 2)}, {})


def test_images_match_diffusers_own_loaders(tmp_path: Path, pipe, shapes) -> None:
    """Our reading of diffusers and kohya files gives the image diffusers' own loaders give."""
    base_image = render(pipe)
    # 1. A diffusers file (alpha in its metadata), loaded by diffusers itself and by us.
    folder = tmp_path / "lora"
    folder.mkdir()
    lora = random_lora(shapes, rank=RANK, alpha=ALPHA, seed=1, scale=0.2)
    save_lora(lora, folder / "original.safetensors")
    native = render(pipe, str(folder), weight_name="original.safetensors")
    ours = render(pipe, to_diffusers(*load_lora_file(folder / "original.safetensors"))[0])
    assert (native - base_image).abs().max() > 1e-3, "the LoRA should change the image"
    torch.testing.assert_close(ours, native, atol=1e-5, rtol=0)
    # 2. Its kohya conversion gives the same image.
    save_lora(read_lora(*load_lora_file(folder / "original.safetensors")), folder / "kohya.safetensors", target="kohya")
    converted = render(pipe, to_diffusers(*load_lora_file(folder / "kohya.safetensors"))[0])
    torch.testing.assert_close(converted, native, atol=1e-5, rtol=0)
    # 3. A kohya file diffusers can read on this model (double blocks), with alpha != rank.
    double = [name for name in shapes if name.startswith("transformer.transformer_blocks.")]
    kohya, metadata, _ = lora_tensors(random_lora(shapes, rank=RANK, alpha=2.0, modules=double, seed=2, scale=0.3), "kohya")
    save_file(kohya, str(folder / "double.safetensors"), metadata=metadata)
    native_kohya = render(pipe, str(folder), weight_name="double.safetensors")
    ours_kohya = render(pipe, to_diffusers(*load_lora_file(folder / "double.safetensors"))[0])
    torch.testing.assert_close(ours_kohya, native_kohya, atol=1e-5, rtol=0)


def test_modules_with_no_kohya_name_are_refused(shapes) -> None:
    lora = LoraSet({"transformer.pos_embed.proj": LoraModule(torch.ones(1, 2), torch.ones(2, 1))}, "diffusers")
    with pytest.raises(LoraFileError, match="no kohya name"):
        lora_tensors(lora, "kohya")


@pytest.mark.parametrize("recorded", ["not json", "[1]", '{"double_blocks.0.img_attn.qkv": [9, 9, 9]}'])
def test_forged_split_metadata_is_ignored(recorded: str) -> None:
    tensors = {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 32),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(96, 4),
    }
    lora = read_lora(tensors, {"lora_space.split": recorded})
    assert set(lora.modules) == set(DOUBLE_QKV) and {m.rank for m in lora.modules.values()} == {RANK}


LINEAR1 = [f"transformer.single_transformer_blocks.0.{part}" for part in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]


@pytest.fixture(scope="module")
def dev_width_pipe():
    """The tiny pipeline with a transformer of FLUX.1-dev's width (3072) and one single block, no double.

    diffusers' kohya converter splits a single block's `linear1` by FLUX.1-dev's sizes, so a
    kohya file is read back by plain diffusers only at that width. The weights are left
    uninitialised (built on the meta device): only the LoRA layers diffusers attaches are read.
    """
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from lora_space.tiny.model import build_tiny_pipeline

    tiny = build_tiny_pipeline()
    config = {key: tiny.transformer.config[key] for key in ("in_channels", "joint_attention_dim", "pooled_projection_dim")}
    with torch.device("meta"):
        wide = FluxTransformer2DModel(
            **config, num_layers=0, num_single_layers=1, attention_head_dim=128, num_attention_heads=24,
            guidance_embeds=True, axes_dims_rope=(16, 56, 56),
        ).to(torch.bfloat16)  # fmt: skip
    return FluxPipeline(**{**tiny.components, "transformer": wide.to_empty(device="cpu")})


def attached(transformer, adapter: str) -> dict[str, tuple[int, torch.Tensor]]:
    """What diffusers attached: `transformer.<module>` -> (rank, its update B @ A * scaling in float32)."""
    return {
        f"transformer.{name}": (module.r[adapter], module.scaling[adapter] * (module.lora_B[adapter].weight.float() @ module.lora_A[adapter].weight.float()))
        for name, module in transformer.named_modules()
        if hasattr(module, "r") and adapter in module.r
    }


def test_kohya_linear1_is_written_in_kohyas_split_layout_so_readers_recover_rank_r(tmp_path: Path, dev_width_pipe) -> None:
    dev = known_base("black-forest-labs/FLUX.1-dev").modules
    # 1. diffusers' recipe (this app's trainer): q, k, v of a single block at rank 4, no MLP part.
    trained = random_lora(dev, rank=RANK, alpha=2.0, seed=1, modules=LINEAR1[:3])
    save_lora(trained, tmp_path / "qkv.safetensors", target="kohya")
    tensors, metadata = load_lora_file(tmp_path / "qkv.safetensors")
    assert tensors["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape == (4 * RANK, 3072)  # 4 parts of rank 4
    dev_width_pipe.load_lora_weights(str(tmp_path), weight_name="qkv.safetensors", adapter_name="qkv")
    try:
        found = attached(dev_width_pipe.transformer, "qkv")
    finally:
        dev_width_pipe.delete_adapters("qkv")
    assert sorted(found) == sorted(LINEAR1)
    for name in LINEAR1[:3]:  # each at rank 4 (the 3-block layout gave 12), with the update it was trained to make
        rank, update = found[name]
        expected = trained.modules[name].delta()
        assert rank == RANK and float((update - expected).norm() / expected.norm()) < 1e-2  # bf16 model
    # linear1 is one module in kohya's layout: diffusers always splits off its MLP part, which this LoRA lacks.
    # It comes as rank 4 of zeros (it was rank 12 of zeros); no tool computes anything from it.
    assert found[LINEAR1[3]][0] == RANK and not found[LINEAR1[3]][1].any()
    # 2. A LoRA on the whole of linear1, as kohya trains it: every part at rank 4, none all zeros.
    whole = random_lora(dev, rank=RANK, alpha=2.0, seed=2, modules=LINEAR1)
    save_lora(whole, tmp_path / "linear1.safetensors", target="kohya")
    dev_width_pipe.load_lora_weights(str(tmp_path), weight_name="linear1.safetensors", adapter_name="whole")
    try:
        found = attached(dev_width_pipe.transformer, "whole")
    finally:
        dev_width_pipe.delete_adapters("whole")
    assert sorted(found) == sorted(LINEAR1) and all(rank == RANK and update.any() for rank, update in found.values())
    # 3. Read back here: exactly the modules trained, bit for bit, with the recorded part ranks or without them.
    for recorded in (metadata, {}):
        back = read_lora(tensors, recorded)
        assert sorted(back.modules) == sorted(LINEAR1[:3])
        for name in LINEAR1[:3]:
            module = back.modules[name]
            assert module.rank == RANK and module.scale == trained.modules[name].scale
            assert torch.equal(module.A, trained.modules[name].A) and torch.equal(module.B, trained.modules[name].B)
    # 4. A file written before this layout (parts side by side, rank 12, their ranks recorded) still reads exactly.
    parts = [trained.modules[name] for name in LINEAR1[:3]]
    up = torch.zeros(3 * 3072 + 12288, 3 * RANK)
    for index, module in enumerate(parts):
        up[index * 3072 : (index + 1) * 3072, index * RANK : (index + 1) * RANK] = module.B
    earlier = {
        "lora_unet_single_blocks_0_linear1.lora_down.weight": torch.cat([module.A for module in parts]),
        "lora_unet_single_blocks_0_linear1.lora_up.weight": up,
        "lora_unet_single_blocks_0_linear1.alpha": torch.tensor(2.0 / RANK * 3 * RANK),
    }
    back = read_lora(earlier, {"lora_space.split": '{"single_blocks.0.linear1": [4, 4, 4, 0]}'})
    assert sorted(back.modules) == sorted(LINEAR1[:3]) and all(back.modules[name].rank == RANK for name in LINEAR1[:3])
    assert all(torch.equal(back.modules[name].B, trained.modules[name].B) for name in LINEAR1[:3])
