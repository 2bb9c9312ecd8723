"""Compiled generation on the tiny model: a new mix (other LoRAs, other strengths) is hot-swapped
into the slots without recompiling, and each image equals the eager engine's.

Backends: the image test compiles with `inductor`, the backend a GPU Space uses (on a CPU it
generates and builds C++, about 30 s here for the tiny blocks); the others, which test what the
compiled graphs guard on (recompiles do not depend on the backend), use `aot_eager`, which traces
the same graphs in about 5 s without generating code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
from safetensors.torch import save_file

from lora_space.generate.compiled import CompileOptions
from lora_space.generate.engine import Engine
from lora_space.generate.request import GenerationRequest, LoraSpec, Options
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.train.trainer import run_chunk
from tests.lora_factory import lora_tensors, write_lora
from tests.train_factory import job_folder

OPTIONS = Options(seed=3, steps=2, width=64, height=64)


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    found = {name: write_lora(folder / f"{name}.safetensors", seed) for seed, name in enumerate("abcd")}
    found["wide"] = write_lora(folder / "wide.safetensors", 9, rank=16)  # above the slots' rank 8
    text = lora_tensors(10) | {
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 32) * 0.5,
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, 4) * 0.5,
    }
    save_file(text, str(folder / "text.safetensors"))
    found["text"] = folder / "text.safetensors"
    return found


def spec(path: Path, strength: float) -> LoraSpec:
    return LoraSpec(key=str(path), file=str(path), name=path.stem, strength=strength)


def run(engine: Engine, *specs: LoraSpec):
    result = engine.generate(GenerationRequest(prompt="a lighthouse", options=OPTIONS, loras=specs))
    return result, np.asarray(result.images[0], dtype=np.float32)


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_new_mixes_swap_in_without_recompiling_and_each_image_equals_eager(loras):
    compiled = Engine(build_tiny_pipeline(), compile=CompileOptions(slots=3, rank=8, backend="inductor"))
    eager = Engine(build_tiny_pipeline())
    first, image = run(compiled, spec(loras["a"], 0.8))  # compiles the blocks
    assert first.compiled and first.warnings == []
    np.testing.assert_allclose(image, run(eager, spec(loras["a"], 0.8))[1], atol=2.0)  # 8-bit images
    compiled_graphs = graphs()
    mixes = [
        (spec(loras["b"], 0.5), spec(loras["c"], -0.3)),
        (spec(loras["a"], 0.2), spec(loras["b"], 0.9), spec(loras["d"], 0.6)),
        (spec(loras["d"], 1.1),),
        (),
    ]
    seen = [image]
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile would raise here
        for mix in mixes:
            result, image = run(compiled, *mix)
            assert result.compiled and result.warnings == []
            np.testing.assert_allclose(image, run(eager, *mix)[1], atol=2.0)
            seen.append(image)
    assert graphs() == compiled_graphs
    assert len({array.tobytes() for array in seen}) == len(seen)  # every mix made its own image


def test_a_mix_that_does_not_fit_runs_eager_says_why_and_the_next_stays_compiled(loras):
    compiled = Engine(build_tiny_pipeline(), cache_size=8, compile=CompileOptions(slots=3, rank=8, backend="aot_eager"))
    eager = Engine(build_tiny_pipeline())
    run(compiled, spec(loras["a"], 0.8))  # compiles the blocks
    too_many = tuple(spec(loras[name], 0.3) for name in "abcd")
    cases = [
        (too_many, "this mix has 4 LoRAs and compiled generation holds 3 (LORA_SPACE_COMPILE_SLOTS)"),
        ((spec(loras["wide"], 0.7),), "LoRA 'wide' has rank 16, above the 8 compiled slots hold (LORA_SPACE_COMPILE_RANK)"),
        ((spec(loras["text"], 0.7),), "LoRA 'text' also changes the text encoder, which compiled generation does not swap"),
    ]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for mix, reason in cases:
            result, image = run(compiled, *mix)
            assert not result.compiled
            assert result.warnings == [f"This image was made without compiled generation (slower): {reason}."]
            np.testing.assert_allclose(image, run(eager, *mix)[1], atol=2.0)
            # Its adapters are gone again: the next mix runs compiled, on the graphs compiled before.
            assert set(compiled.loaded_adapters()) == {"slot_0", "slot_1", "slot_2"}
            result, image = run(compiled, spec(loras["b"], 0.6), spec(loras["c"], 0.4))
            assert result.compiled
            np.testing.assert_allclose(image, run(eager, spec(loras["b"], 0.6), spec(loras["c"], 0.4))[1], atol=2.0)


def test_evicted_loras_leave_their_slots_and_come_back_from_disk(loras):
    compiled = Engine(build_tiny_pipeline(), cache_size=2, compile=CompileOptions(slots=2, rank=8, backend="aot_eager"))
    eager = Engine(build_tiny_pipeline())
    for mix in [("a", "b"), ("c",), ("a", "d"), ("b", "c")]:
        specs = tuple(spec(loras[name], 0.7) for name in mix)
        result, image = run(compiled, *specs)
        assert result.compiled
        np.testing.assert_allclose(image, run(eager, *specs)[1], atol=2.0)
    assert compiled.file_reads == 7  # a, b, c, then a and d again (evicted), then b and c again


def test_a_training_chunk_borrows_the_compiled_pipeline_eager_and_gives_it_back(tmp_path, loras, red_zip):  # noqa: F811
    engine = Engine(build_tiny_pipeline(), compile=CompileOptions(slots=3, rank=8, backend="aot_eager"))
    mix = (spec(loras["a"], 0.8), spec(loras["b"], 0.3))
    _, before = run(engine, *mix)
    compiled_graphs = graphs()
    weights = {name: tensor.clone() for name, tensor in engine.pipe.transformer.state_dict().items()}
    files = job_folder(tmp_path / "job", red_zip, max_train_steps=4)
    with torch._dynamo.config.patch(error_on_recompile=True):
        with engine.lend() as pipe:  # training (forward and backward) runs eager: nothing compiles
            result = run_chunk(pipe, files.root, adapter_name="train_compiled")
        assert result.finished and files.final.exists()
        again, after = run(engine, *mix)
    assert again.compiled and graphs() == compiled_graphs
    assert np.array_equal(after, before)
    now = engine.pipe.transformer.state_dict()
    assert now.keys() == weights.keys() and all(torch.equal(weights[name], now[name]) for name in weights)


def test_the_training_rank_check_sees_the_layers_inside_the_slots():
    from lora_space.core.errors import TrainConfigError
    from lora_space.train.config import TrainConfig
    from lora_space.train.steps import check_rank, rank_bound

    engine = Engine(build_tiny_pipeline(), compile=CompileOptions(slots=1, rank=8, backend="aot_eager"))
    transformer = engine.pipe.transformer  # every Linear is a LoRA layer now (its `base_layer` inside)
    assert rank_bound(transformer) == rank_bound(build_tiny_pipeline().transformer) == 32
    with pytest.raises(TrainConfigError, match="network_dim \\(rank\\) 64 is larger than this base model's layers allow"):
        check_rank(transformer, TrainConfig(model_name="tiny", network_dim=64, network_alpha=64))
