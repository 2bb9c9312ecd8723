"""The engine on the tiny model: mixes, strengths, fusing, the LRU cache, failures, concurrency."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_space.core.errors import LoraFileError
from lora_space.generate.engine import Engine
from lora_space.generate.request import GenerationRequest, LoraSpec, Options
from lora_space.tiny.model import build_tiny_pipeline
from tests.lora_factory import write_lora


@pytest.fixture
def engine() -> Engine:
    return Engine(build_tiny_pipeline(), cache_size=3, fuse_after=2)


@pytest.fixture
def loras(tmp_path: Path) -> dict[str, Path]:
    return {name: write_lora(tmp_path / f"{name}.safetensors", seed) for seed, name in enumerate(["a", "b", "c", "d"])}


def spec(path: Path, strength: float) -> LoraSpec:
    return LoraSpec(key=str(path), file=str(path), name=path.stem, strength=strength)


def image(engine: Engine, *specs: LoraSpec, seed: int = 3) -> np.ndarray:
    request = GenerationRequest(prompt="a lighthouse", options=Options(seed=seed, steps=2, width=64, height=64), loras=specs)
    return np.asarray(engine.generate(request).images[0], dtype=np.float32)


def test_strength_zero_is_the_base_image(engine, loras):
    base = image(engine)
    assert np.array_equal(image(engine, spec(loras["a"], 0.0)), base)
    assert not np.array_equal(image(engine, spec(loras["a"], 1.0)), base)
    assert np.array_equal(image(engine), base)  # no LoRA again: back to the base


def test_same_seed_same_image(engine, loras):
    first = image(engine, spec(loras["a"], 0.7))
    again = image(engine, spec(loras["b"], 0.3), spec(loras["a"], 0.7))
    assert np.array_equal(image(engine, spec(loras["a"], 0.7)), first)
    assert not np.array_equal(again, first)


def test_a_blend_differs_from_each_lora_alone(engine, loras):
    blend = image(engine, spec(loras["a"], 0.8), spec(loras["b"], 0.4))
    assert not np.array_equal(blend, image(engine, spec(loras["a"], 1.0)))
    assert not np.array_equal(blend, image(engine, spec(loras["b"], 1.0)))


def test_fused_equals_unfused_and_unfuses_when_the_mix_changes(loras):
    fused_engine = Engine(build_tiny_pipeline(), fuse_after=2)
    never_fused = Engine(build_tiny_pipeline(), fuse_after=10**9)
    mix = (spec(loras["a"], 0.8), spec(loras["b"], -0.4))
    reference = image(never_fused, *mix)
    request = GenerationRequest(prompt="a lighthouse", options=Options(seed=3, steps=2, width=64, height=64), loras=mix)
    assert fused_engine.generate(request).fused is False
    second = fused_engine.generate(request)
    assert second.fused is True
    np.testing.assert_allclose(np.asarray(second.images[0], dtype=np.float32), reference, atol=1.0)  # 8-bit images
    # A new mix unfuses: its image equals the one from an engine that never fused.
    other = (spec(loras["a"], 0.3),)
    np.testing.assert_allclose(image(fused_engine, *other), image(never_fused, *other), atol=1.0)
    np.testing.assert_allclose(image(fused_engine), image(never_fused), atol=1.0)


def test_changing_strengths_reads_no_file(engine, loras):
    image(engine, spec(loras["a"], 0.8), spec(loras["b"], 0.4))
    reads = engine.file_reads
    for strength in (0.1, 0.5, 1.2):
        image(engine, spec(loras["a"], strength), spec(loras["b"], 0.4))
    assert engine.file_reads == reads == 2


def test_lru_cache_deletes_evicted_adapters_from_the_model(engine, loras):
    for name in ("a", "b", "c", "d"):
        image(engine, spec(loras[name], 0.5))
    assert len(engine.loaded_adapters()) == 3  # cache_size
    reads = engine.file_reads
    image(engine, spec(loras["a"], 0.5))  # "a" fell out: read again
    assert engine.file_reads == reads + 1
    assert len(engine.loaded_adapters()) == 3


def test_a_lora_for_another_model_is_refused_and_the_next_request_works(engine, loras, tmp_path):
    base = image(engine)
    alone = image(engine, spec(loras["a"], 0.8))
    foreign = tmp_path / "sdxl.safetensors"
    save_file(
        {
            "transformer.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.ones(4, 320),
            "transformer.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.ones(320, 4),
        },
        str(foreign),
    )
    with pytest.raises(LoraFileError):
        image(engine, spec(loras["a"], 0.8), spec(foreign, 1.0))
    assert np.array_equal(image(engine, spec(loras["a"], 0.8)), alone)
    assert np.array_equal(image(engine), base)


def test_partly_matching_lora_warns_with_the_share(engine, tmp_path):
    path = write_lora(tmp_path / "half.safetensors", 5, blocks=("transformer_blocks.0",), suffixes=("attn.to_q",))
    tensors = load_file(str(path))
    tensors["transformer.transformer_blocks.0.attn.no_such.lora_A.weight"] = torch.ones(4, 32)
    tensors["transformer.transformer_blocks.0.attn.no_such.lora_B.weight"] = torch.ones(32, 4)
    save_file(tensors, str(path))
    request = GenerationRequest(prompt="x", options=Options(seed=1, steps=1, width=64, height=64), loras=(spec(path, 1.0),))
    (warning,) = engine.generate(request).warnings
    assert "1 of 2 modules (50%)" in warning


def test_concurrent_requests_with_different_mixes_get_their_own_images(engine, loras):
    mixes = [
        (),
        (spec(loras["a"], 1.0),),
        (spec(loras["b"], 0.6),),
        (spec(loras["a"], 0.8), spec(loras["b"], 0.4)),
        (spec(loras["c"], 1.2),),
        (spec(loras["a"], -0.5),),
    ]
    alone = [image(engine, *mix) for mix in mixes]
    results: dict[int, np.ndarray] = {}

    def worker(index: int) -> None:
        results[index] = image(engine, *mixes[index % len(mixes)])

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, result in results.items():
        np.testing.assert_allclose(result, alone[index % len(mixes)], atol=1.0)


def test_the_engine_blend_equals_diffusers_set_adapters(engine, loras):
    reference = build_tiny_pipeline()
    for name in ("a", "b", "c"):
        reference.load_lora_weights(load_file(str(loras[name])), adapter_name=name)
    reference.set_adapters(["a", "b"], adapter_weights=[0.8, -0.4])
    generator = torch.Generator().manual_seed(3)
    expected = np.asarray(reference("a lighthouse", num_inference_steps=2, width=64, height=64, generator=generator).images[0], dtype=np.float32)
    image(engine, spec(loras["c"], 1.0))  # another adapter attached, then inactive
    assert np.array_equal(image(engine, spec(loras["a"], 0.8), spec(loras["b"], -0.4)), expected)


def test_many_fuse_and_unfuse_cycles_in_bfloat16_leave_the_base_weights_bit_exact(loras):
    pipe = build_tiny_pipeline(dtype=torch.bfloat16)
    original = {name: tensor.clone() for name, tensor in pipe.transformer.state_dict().items()}
    engine = Engine(pipe, fuse_after=1)
    for cycle in range(30):
        mix = (spec(loras["a"], 0.3 + 0.1 * (cycle % 5)), spec(loras["b"], 0.9 - 0.1 * (cycle % 3)))
        request = GenerationRequest(prompt="x", options=Options(seed=1, steps=1, width=64, height=64), loras=mix)
        assert engine.generate(request).fused
    engine.generate(GenerationRequest(prompt="x", options=Options(seed=1, steps=1, width=64, height=64)))  # unfuses
    assert not pipe.fused_loras  # diffusers' records agree
    now = pipe.transformer.state_dict()
    for name, tensor in original.items():
        key = name if name in now else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(now[key], tensor), name


def test_a_mix_beyond_the_fuse_memory_runs_unfused(loras):
    engine = Engine(build_tiny_pipeline(), fuse_after=1, fuse_memory_bytes=0)
    request = GenerationRequest(prompt="x", options=Options(seed=1, steps=1, width=64, height=64), loras=(spec(loras["a"], 0.5),))
    assert not engine.generate(request).fused
    assert not engine.generate(request).fused


def test_a_request_with_more_loras_than_the_cache_keeps_them_all(loras):
    small = Engine(build_tiny_pipeline(), cache_size=2)
    roomy = Engine(build_tiny_pipeline(), cache_size=8)
    mix = (spec(loras["a"], 0.5), spec(loras["b"], 0.5), spec(loras["c"], 0.5))
    assert np.array_equal(image(small, *mix), image(roomy, *mix))
    image(small, spec(loras["d"], 0.5))  # the next request evicts down to the cache size
    assert len(small.loaded_adapters()) == 2
