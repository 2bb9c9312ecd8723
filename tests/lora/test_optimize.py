"""Resize by SVD, target energy, dtype change, pruning, and the file they write."""

from __future__ import annotations

import json

import pytest
import torch

from lora_space.core.errors import LoraFileError
from lora_space.library.tools import optimize_source
from lora_space.lora.export import diffusers_tensors, save_lora
from lora_space.lora.formats import LoraModule, LoraSet, read_lora, to_diffusers
from lora_space.lora.optimize import optimize
from lora_space.lora.safefile import load_lora_file
from lora_space.lora.shapes import tiny_shapes
from lora_space.lora.synthetic import random_lora

RANK, ALPHA = 4, 8.0
NAME = "transformer.transformer_blocks.0.attn.to_q"


@pytest.fixture(scope="module")
def lora() -> LoraSet:
    return random_lora(tiny_shapes().modules, rank=RANK, alpha=ALPHA, seed=7, scale=0.2)


def _known_spectrum(values: list[float]) -> LoraSet:
    """One 32x32 module whose update has exactly these singular values (alpha = rank)."""
    generator = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(32, len(values), generator=generator))
    V, _ = torch.linalg.qr(torch.randn(32, len(values), generator=generator))
    return LoraSet({NAME: LoraModule((V * torch.tensor(values)).T.contiguous(), U.contiguous())}, "diffusers")


def test_full_rank_resize_gives_the_same_image(lora: LoraSet) -> None:
    from lora_space.tiny.model import build_tiny_pipeline

    resized, report = optimize(lora, rank=RANK)
    assert report.energy_kept == pytest.approx(1.0) and all(m.rank_after == RANK for m in report.modules)
    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    images = []
    for name, candidate in (("original", lora), ("resized", resized)):
        pipe.load_lora_weights(to_diffusers(*diffusers_tensors(candidate))[0], adapter_name=name)
        pipe.set_adapters([name], [1.0])
        generator = torch.Generator().manual_seed(0)
        images.append(pipe("a cat", num_inference_steps=2, height=64, width=64, generator=generator, output_type="pt").images)
        pipe.delete_adapters(name)
    torch.testing.assert_close(images[1], images[0], atol=1e-4, rtol=0)


def test_lower_rank_keeps_the_best_approximation(lora: LoraSet) -> None:
    resized, report = optimize(lora, rank=2)
    assert report.energy_kept < 1 and all(m.rank_after == 2 and m.energy_kept < 1 for m in report.modules)
    original, smaller = lora.modules[NAME], resized.modules[NAME]
    assert smaller.rank == 2 and smaller.alpha == ALPHA * 2 / RANK and smaller.scale == original.scale
    S = torch.linalg.svdvals(original.delta().double())
    error = (original.delta() - smaller.delta()).double().norm() ** 2
    assert float(error) == pytest.approx(float((S[2:] ** 2).sum()), rel=1e-3)
    kept = next(m for m in report.modules if m.name == NAME).energy_kept
    assert kept == pytest.approx(float((S[:2] ** 2).sum() / (S**2).sum()), rel=1e-4)


def test_target_energy_picks_the_smallest_rank() -> None:
    single = _known_spectrum([4.0, 2.0, 1.0, 0.5])  # energies 16, 4, 1, 0.25 of 21.25
    _, report = optimize(single, energy=0.9)
    assert report.modules[0].rank_after == 2 and report.energy_kept == pytest.approx(20 / 21.25)
    _, capped = optimize(single, energy=0.99, rank=1)
    assert capped.modules[0].rank_after == 1


def test_dtype_change_and_overflow() -> None:
    half, report = optimize(_known_spectrum([4.0, 2.0]), dtype="bf16")
    assert half.modules[NAME].A.dtype == torch.bfloat16 and report.bytes_after == report.bytes_before // 2
    with pytest.raises(LoraFileError, match="too large for fp16"):
        optimize(_known_spectrum([1e6, 1.0]), dtype="fp16")


def test_negligible_modules_are_pruned(lora: LoraSet) -> None:
    quiet = LoraSet(dict(lora.modules), "diffusers")
    quiet.modules[NAME] = LoraModule(lora.modules[NAME].A * 1e-4, lora.modules[NAME].B, ALPHA)
    pruned, report = optimize(quiet, prune_below=0.01)
    assert report.pruned == [NAME] and NAME not in pruned.modules and len(pruned.modules) == len(lora.modules) - 1
    assert 0.999 < report.energy_kept < 1


def test_bad_arguments_are_refused(lora: LoraSet) -> None:
    for options, phrase in (({"rank": 0}, "rank=0"), ({"energy": 1.5}, "energy=1.5"), ({"dtype": "int8"}, "int8"), ({"prune_below": 2}, "prune_below")):
        with pytest.raises(LoraFileError, match=phrase):
            optimize(lora, **options)


def test_optimize_source_writes_a_file_with_its_history(settings, lora: LoraSet) -> None:
    settings.lora_dir.mkdir(parents=True, exist_ok=True)
    save_lora(lora, settings.lora_dir / "style.safetensors", target="kohya")
    path, report = optimize_source("style", settings=settings, rank=2, dtype="bf16", target="kohya")
    assert path.is_relative_to(settings.data_dir / "outputs") and path.suffix == ".safetensors"
    tensors, metadata = load_lora_file(path)
    history = json.loads(metadata["lora_space.history"])
    assert history[-1]["op"] == "optimize" and history[-1]["rank"] == 2 and history[-1]["dtype"] == "bf16"
    back = read_lora(tensors, metadata)
    assert back.format == "kohya" and {m.rank for m in back.modules.values()} == {2}
    assert {m.A.dtype for m in back.modules.values()} == {torch.bfloat16}
    assert report.energy_kept < 1
