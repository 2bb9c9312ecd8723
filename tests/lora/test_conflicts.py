"""Conflicts between LoRAs: cosine of their updates per module and per block, overlap, warnings."""

from __future__ import annotations

import pytest
import torch

from lora_space.core.errors import LoraFileError
from lora_space.library.tools import compare_sources
from lora_space.lora.conflicts import compare_loras
from lora_space.lora.export import save_lora
from lora_space.lora.formats import LoraModule, LoraSet
from lora_space.lora.shapes import tiny_shapes
from lora_space.lora.synthetic import random_lora


@pytest.fixture(scope="module")
def shapes() -> dict[str, tuple[int, int]]:
    return tiny_shapes().modules


def _negated(lora: LoraSet) -> LoraSet:
    return LoraSet({name: LoraModule(m.A, -m.B, m.alpha) for name, m in lora.modules.items()}, lora.format)


def test_inner_product_matches_the_dense_updates(shapes) -> None:
    name = "transformer.single_transformer_blocks.0.proj_mlp"
    a = random_lora(shapes, rank=4, alpha=8.0, modules=[name], seed=1).modules[name]
    b = random_lora(shapes, rank=2, alpha=1.0, modules=[name], seed=2).modules[name]
    assert a.inner(b) == pytest.approx(float((a.delta() * b.delta()).sum()), rel=1e-5)
    assert a.norm() == pytest.approx(float(a.delta().norm()), rel=1e-5)


def test_a_lora_with_itself_and_its_negation(shapes) -> None:
    lora = random_lora(shapes, rank=4, alpha=8.0, seed=3)
    same = compare_loras({"style": lora, "copy": lora})
    assert all(row.cosine == pytest.approx(1.0) for row in same.modules)
    assert len(same.modules) == len(lora.modules) and all(b.cosine == pytest.approx(1.0) for b in same.blocks)
    pair = same.pairs[0]
    assert pair.overlap == 1.0 and pair.verdict == "reinforce" and pair.norm_ratio == pytest.approx(1.0)
    assert same.warnings and "overshoot" in same.warnings[0] and "at 0.50" in same.warnings[0]
    opposite = compare_loras({"style": lora, "negated": _negated(lora)})
    assert all(row.cosine == pytest.approx(-1.0) for row in opposite.modules)
    assert opposite.pairs[0].verdict == "fight" and "undoes" in opposite.warnings[0]


def test_strengths_scale_norms_and_flip_the_sign(shapes) -> None:
    lora = random_lora(shapes, rank=4, alpha=8.0, seed=3)
    report = compare_loras({"a": lora, "b": lora}, {"a": 1.0, "b": -0.5})
    assert report.pairs[0].cosine == pytest.approx(-1.0) and report.pairs[0].norm_ratio == pytest.approx(2.0)


def test_disjoint_loras_report_no_overlap(shapes) -> None:
    double = [name for name in shapes if ".transformer_blocks." in name]
    single = [name for name in shapes if ".single_transformer_blocks." in name]
    report = compare_loras({
        "faces": random_lora(shapes, rank=4, modules=double, seed=1),
        "style": random_lora(shapes, rank=4, modules=single, seed=2),
    })
    pair = report.pairs[0]
    assert (pair.shared_modules, pair.overlap, pair.verdict) == (0, 0.0, "independent")
    assert report.blocks == [] and report.modules == [] and report.warnings == []


def test_compare_sources_reads_library_files(settings, shapes) -> None:
    settings.lora_dir.mkdir(parents=True, exist_ok=True)
    save_lora(random_lora(shapes, rank=4, seed=1), settings.lora_dir / "one.safetensors")
    save_lora(random_lora(shapes, rank=4, seed=1), settings.lora_dir / "two.safetensors", target="kohya")
    report = compare_sources(["one", "two"], settings=settings, strengths=[1.0, 1.0])
    assert report.loras == ["one", "two"] and report.pairs[0].cosine == pytest.approx(1.0)
    with pytest.raises(LoraFileError, match="Give 2 to"):
        compare_sources(["one"], settings=settings)
    with pytest.raises(LoraFileError, match="one strength per LoRA"):
        compare_sources(["one", "two"], settings=settings, strengths=[1.0])


def test_per_block_cosine_combines_its_modules(shapes) -> None:
    lora = random_lora(shapes, rank=4, seed=4, modules=["transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_k"])
    half = LoraSet(dict(lora.modules), "diffusers")
    half.modules["transformer.transformer_blocks.0.attn.to_k"] = LoraModule(torch.zeros(4, 32), torch.zeros(32, 4))
    report = compare_loras({"a": lora, "b": half})
    block = report.blocks[0]
    to_q, to_k = (lora.modules[f"transformer.transformer_blocks.0.attn.{n}"].norm() for n in ("to_q", "to_k"))
    assert block.block == "double 0" and block.shared_modules == 2
    assert block.cosine == pytest.approx(to_q / (to_q**2 + to_k**2) ** 0.5)
