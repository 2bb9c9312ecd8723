"""`/inspect_lora`: reports from the header alone, for each layout, and compatibility reasons."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from lora_space.core.errors import UnsafeFileError
from lora_space.library.inspect import inspect_source
from lora_space.lora.export import lora_tensors
from lora_space.lora.shapes import known_bases, tiny_shapes
from lora_space.lora.synthetic import random_lora
from tests.hub_standin import HubStandIn, isolated_hub

RANK, ALPHA = 4, 8.0
API_KEYS = {
    "source", "format", "rank", "ranks", "alpha", "num_tensors", "target_modules", "size_bytes", "dtype",
    "compatible", "coverage", "base_model_guess", "trigger_words", "training_info", "warnings",
}
KOHYA_FACTS = {
    "ss_max_train_steps": "1500", "ss_num_epochs": "10", "ss_num_train_images": "24",
    "ss_resolution": "(1024, 1024)", "ss_sd_model_name": "flux1-dev.safetensors", "ss_network_alpha": "8",
}


@pytest.fixture
def hub_standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with isolated_hub(tmp_path, monkeypatch) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def shapes() -> dict[str, tuple[int, int]]:
    return tiny_shapes().modules


def _tiny_lora(shapes, alpha: float | None = ALPHA):
    return random_lora(shapes, rank=RANK, alpha=alpha, seed=5)


def _write(folder: Path, name: str, tensors: dict, metadata: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata or {})
    return path


def _layout(shapes, layout: str) -> tuple[dict, dict]:
    """Tensors and metadata of a rank-4 LoRA for the tiny model in `layout`."""
    if layout in ("diffusers", "kohya", "comfyui"):
        tensors, metadata, _ = lora_tensors(_tiny_lora(shapes), layout)
        return tensors, metadata
    if layout == "peft":
        tensors, _, _ = lora_tensors(_tiny_lora(shapes, alpha=None), "diffusers")
        return {f"base_model.model.{key.removeprefix('transformer.')}": value for key, value in tensors.items()}, {}
    prefix = "double_blocks.0.processor."  # xlabs
    return {
        f"{prefix}qkv_lora1.down.weight": torch.randn(RANK, 32), f"{prefix}qkv_lora1.up.weight": torch.randn(96, RANK),
        f"{prefix}proj_lora1.down.weight": torch.randn(RANK, 32), f"{prefix}proj_lora1.up.weight": torch.randn(32, RANK),
        f"{prefix}qkv_lora2.down.weight": torch.randn(RANK, 32), f"{prefix}qkv_lora2.up.weight": torch.randn(96, RANK),
    }, {}


@pytest.mark.parametrize("layout", ["diffusers", "peft", "kohya", "comfyui", "xlabs"])
def test_report_gets_each_layout_right(settings, shapes, layout: str) -> None:
    tensors, metadata = _layout(shapes, layout)
    path = _write(settings.lora_dir, f"style_{layout}", tensors, metadata)
    report = inspect_source(f"style_{layout}", settings=settings)
    expected_alpha = ALPHA if layout in ("diffusers", "kohya", "comfyui") else float(RANK)  # none stored: alpha = rank
    assert (report.format, report.rank, report.ranks, report.alpha) == (layout, RANK, {}, expected_alpha)
    assert report.num_tensors == len(tensors) and report.size_bytes == path.stat().st_size
    assert report.compatible and report.coverage == 1.0 and report.reason == ""
    assert report.base_model_guess.startswith("tiny") and report.dtype == "fp32"
    assert "attn.to_q" in report.target_modules
    assert report.trained_blocks["double"] == ([0] if layout == "xlabs" else [0, 1])


def test_report_dict_has_the_api_keys_and_no_path(settings, shapes) -> None:
    _write(settings.lora_dir, "style", *_layout(shapes, "diffusers"))
    report = inspect_source("style", settings=settings).to_dict()
    assert API_KEYS <= set(report) and "path" not in report
    assert report["trained_blocks"] == {"double": [0, 1], "single": [0, 1], "text_encoder": [], "other": sorted(report["trained_blocks"]["other"])}


def test_ranks_that_differ_are_listed(settings, shapes) -> None:
    lora = _tiny_lora(shapes)
    odd = "transformer.x_embedder"
    lora.modules[odd] = random_lora(shapes, rank=8, alpha=2.0, modules=[odd]).modules[odd]
    _write(settings.lora_dir, "mixed", *lora_tensors(lora, "kohya")[:2])
    report = inspect_source("mixed", settings=settings)
    assert report.rank == RANK and report.ranks == {odd: 8}
    assert report.alpha == ALPHA and report.alphas == {odd: 2.0}


def test_kohya_training_metadata_is_reported(settings, shapes) -> None:
    tensors, metadata = _layout(shapes, "kohya")
    _write(settings.lora_dir, "trained", tensors, {**metadata, **KOHYA_FACTS})
    info = inspect_source("trained", settings=settings).training_info
    assert info["steps"] == 1500 and info["epochs"] == 10 and info["dataset_size"] == 24
    assert info["resolution"] == "(1024, 1024)" and info["base_model"] == "flux1-dev.safetensors"


def test_sdxl_lora_is_refused_with_its_reason(settings) -> None:
    tensors = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 2048),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(640, 4),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.alpha": torch.tensor(4.0),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 1280),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(5120, 4),
    }
    _write(settings.lora_dir, "sdxl", tensors)
    report = inspect_source("sdxl", settings=settings)
    assert report.format == "kohya" and report.base_model_guess == "SDXL"
    assert not report.compatible and report.coverage == 0.0 and "trained for SDXL" in report.reason


def test_flux_dev_lora_on_the_tiny_base_names_the_hidden_size(settings) -> None:
    dev = known_bases()[0]
    names = ["transformer.transformer_blocks.0.attn.to_q", "transformer.time_text_embed.guidance_embedder.linear_1"]
    tensors = lora_tensors(random_lora(dev.modules, rank=2, modules=names), "diffusers")[0]
    _write(settings.lora_dir, "dev", tensors)
    report = inspect_source("dev", settings=settings)
    assert report.base_model_guess == "FLUX.1-dev" and not report.compatible
    assert "hidden size 3072" in report.reason and "hidden size 32" in report.reason


def test_unknown_keys_are_reported_not_guessed(settings) -> None:
    _write(settings.lora_dir, "odd", {"model.layers.0.mlp.weight": torch.zeros(2, 2)})
    report = inspect_source("odd", settings=settings)
    assert report.format == "unknown" and report.base_model_guess == "unknown"
    assert not report.compatible and "unknown format" in report.reason


def test_partial_coverage_warns(settings, shapes) -> None:
    lora = _tiny_lora(shapes)
    lora.modules["transformer.transformer_blocks.0.attn.to_q"].A = torch.zeros(RANK, 48)  # wrong input width
    _write(settings.lora_dir, "partial", *lora_tensors(lora, "diffusers")[:2])
    report = inspect_source("partial", settings=settings)
    assert report.compatible and 0.9 < report.coverage < 1
    assert any("do not land" in warning for warning in report.warnings)


def test_pickle_source_is_refused_by_name(settings) -> None:
    with pytest.raises(UnsafeFileError, match="pickle"):
        inspect_source("user/repo/weights.bin", settings=settings)


def test_hub_lora_is_inspected_from_its_header_only(settings, shapes, hub_standin: HubStandIn) -> None:
    tensors, metadata = _layout(shapes, "kohya")
    tensors["padding.weight"] = torch.zeros(512, 1024)  # a 2 MB file
    data = save(tensors, metadata={**metadata, **KOHYA_FACTS})
    card = "---\nbase_model: black-forest-labs/FLUX.1-dev\ninstance_prompt: wtrclr\ntags: [lora]\n---\n# Watercolor\n"
    hub_standin.add_model("alice/watercolor-lora", files={"watercolor.safetensors": data, "README.md": card})
    online = dataclasses.replace(settings, hf_endpoint=hub_standin.endpoint, hf_offline=False)
    for source in ("alice/watercolor-lora", "alice/watercolor-lora/watercolor.safetensors"):
        hub_standin.reset_log()
        report = inspect_source(source, settings=online)
        served = hub_standin.bytes_served("/resolve/")
        assert report.format == "kohya" and report.rank == RANK and report.alpha == ALPHA
        assert report.trigger_words == ["wtrclr"] and report.size_bytes == len(data)
        assert served < 150_000 < len(data), served


def _split_kohya(shapes, metadata: dict[str, str]) -> tuple[dict, dict]:
    """A rank-4 kohya file whose fused q/k/v and linear1 are block-diagonal (as sd-scripts' split_qkv writes),
    without LoRA Space's own `lora_space.split` record; `metadata` stands for what the trainer wrote."""
    tensors, written = lora_tensors(_tiny_lora(shapes), "kohya")[:2]
    assert "lora_space.split" in written  # our export records the split; a foreign file does not
    return tensors, metadata


@pytest.mark.parametrize(
    "metadata",
    [{"ss_network_args": '{"split_qkv": "True", "train_blocks": "all"}'}, {"ss_network_dim": "4", "ss_network_alpha": "8"}],
    ids=["sd-scripts split_qkv", "network_dim"],
)
def test_header_only_split_layout_reports_the_true_rank(settings, shapes, metadata) -> None:
    tensors, metadata = _split_kohya(shapes, metadata)
    _write(settings.lora_dir, "split", tensors, metadata)
    report = inspect_source("split", settings=settings)
    assert (report.rank, report.ranks, report.rank_upper_bounds) == (RANK, {}, [])
    assert report.alpha == ALPHA and report.coverage == 1.0
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0] == 3 * RANK  # 12 rows in the file


def test_header_only_split_layout_without_metadata_marks_upper_bounds(settings, shapes) -> None:
    tensors, _ = _split_kohya(shapes, {})
    _write(settings.lora_dir, "split", tensors)
    report = inspect_source("split", settings=settings)
    assert report.rank == RANK  # the modules whose rank the header shows exactly
    assert "transformer.transformer_blocks.0.attn.to_q" in report.rank_upper_bounds
    assert report.ranks["transformer.transformer_blocks.0.attn.to_q"] == 12
    assert report.ranks["transformer.single_transformer_blocks.0.proj_mlp"] == 16
    assert set(report.rank_upper_bounds) == set(report.ranks)
    assert any("upper bounds (probably rank 4" in warning for warning in report.warnings)


def test_dense_fused_modules_are_not_flagged(settings, shapes) -> None:
    """A dense kohya file (q, k and v share one down matrix) of rank 12 throughout: its rank is the true one."""
    lora = random_lora(shapes, rank=12, alpha=12.0, seed=9)
    groups = [
        [f"transformer.transformer_blocks.{b}.attn.{p}" for p in ("to_q", "to_k", "to_v")] for b in (0, 1)
    ] + [
        [f"transformer.transformer_blocks.{b}.attn.{p}" for p in ("add_q_proj", "add_k_proj", "add_v_proj")] for b in (0, 1)
    ] + [
        [f"transformer.single_transformer_blocks.{b}.{p}" for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")] for b in (0, 1)
    ]
    for group in groups:
        shared = lora.modules[group[0]].A
        for name in group:
            lora.modules[name] = dataclasses.replace(lora.modules[name], A=shared)
    tensors, metadata, _ = lora_tensors(lora, "kohya")
    assert "lora_space.split" not in metadata and tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0] == 12
    _write(settings.lora_dir, "dense", tensors, metadata)
    report = inspect_source("dense", settings=settings)
    assert (report.rank, report.ranks, report.rank_upper_bounds) == (12, {}, [])
    assert not any("upper bound" in warning for warning in report.warnings)


def test_metadata_json_nested_a_hundred_thousand_deep_is_ignored_not_a_crash(settings, shapes) -> None:
    """`ss_network_args` and diffusers' adapter config are JSON in the header; nested too deep they
    raised RecursionError, which reached the visitor as an internal error."""
    tensors, metadata = _layout(shapes, "diffusers")
    deep = "[" * 100_000 + "]" * 100_000
    _write(settings.lora_dir, "deep", tensors, {**metadata, "ss_network_args": deep, "lora_adapter_metadata": deep})
    report = inspect_source("deep", settings=settings)
    assert report.format == "diffusers" and report.compatible
