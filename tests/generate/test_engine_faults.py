"""Hardening: faults on a real tiny pipeline and a real (stand-in) Hub.

Out of memory is injected where it happens on a GPU (a transformer step, a layer merge) by
raising `torch.OutOfMemoryError` from inside the real call. Afterwards the app serves, the
pipeline holds no stray adapters and its base weights are unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from safetensors.torch import save_file

from lora_space.core.errors import HubError, UnsafeFileError
from lora_space.generate.engine import Engine
from lora_space.generate.request import GenerationRequest, LoraSpec, Options
from lora_space.hub import http as hub_http
from lora_space.service import LoraSpace
from lora_space.tiny.model import build_tiny_pipeline
from tests.lora_factory import write_lora

TINY = Options(seed=3, steps=2, width=64, height=64)


@pytest.fixture
def engine() -> Engine:
    return Engine(build_tiny_pipeline(), cache_size=2, fuse_after=1)


@pytest.fixture
def loras(tmp_path: Path) -> dict[str, Path]:
    return {name: write_lora(tmp_path / f"{name}.safetensors", seed) for seed, name in enumerate("abcd")}


def spec(path: Path, strength: float = 0.8) -> LoraSpec:
    return LoraSpec(key=str(path), file=str(path), name=path.stem, strength=strength)


def run(engine: Engine, *specs: LoraSpec) -> np.ndarray:
    request = GenerationRequest(prompt="a lighthouse", options=TINY, loras=specs)
    return np.asarray(engine.generate(request).images[0], dtype=np.int16)


def base_weights(engine: Engine) -> dict[str, torch.Tensor]:
    """The base model's own weights (peft's wrapping and the LoRA tensors left out)."""
    return {
        name.replace(".base_layer", ""): tensor.detach().clone()
        for component in ("transformer", "text_encoder")
        for name, tensor in getattr(engine.pipe, component).state_dict().items()
        if "lora_" not in name
    }


def assert_clean(engine: Engine, before: dict[str, torch.Tensor]) -> None:
    """No adapter beyond the cache, none that the cache does not know, and base weights as before."""
    loaded = set(engine.loaded_adapters())
    assert len(loaded) <= engine.cache_size
    assert loaded == {adapter.adapter_name for adapter in engine._adapters.values()}
    run(engine)  # a request with no LoRA unfuses whatever is fused
    after = base_weights(engine)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)


# -- hole 6: a LoRA that fails to attach still lets the cache evict --------------------------------


def test_failed_attaches_never_pile_adapters_past_the_cache(engine, loras, tmp_path):
    broken = tmp_path / "broken.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.full((4, 32), float("nan")),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(32, 4)}, str(broken))
    before = base_weights(engine)
    for name in "abcd":
        with pytest.raises(UnsafeFileError, match="NaN"):
            run(engine, spec(loras[name]), spec(broken))
        assert len(engine.loaded_adapters()) <= engine.cache_size
    assert_clean(engine, before)


# -- hole 8 and the suite: out of memory mid-fuse and mid-generation --------------------------------


def test_out_of_memory_mid_fuse_leaves_the_base_weights_unchanged(engine, loras, monkeypatch):
    before = base_weights(engine)
    alone = run(engine, spec(loras["a"]), spec(loras["b"], 0.5))  # fuse_after=1: fused on its first run
    run(engine)
    merged = {"count": 0}
    original = LoraLinear.get_delta_weight

    def merge_then_run_out(self, adapter):
        merged["count"] += 1
        if merged["count"] == 3:  # two layers already merged into the base weights
            raise torch.OutOfMemoryError("CUDA out of memory (injected mid-fuse)")
        return original(self, adapter)

    monkeypatch.setattr(LoraLinear, "get_delta_weight", merge_then_run_out)
    with pytest.raises(torch.OutOfMemoryError):
        run(engine, spec(loras["c"]))
    assert merged["count"] == 3
    monkeypatch.setattr(LoraLinear, "get_delta_weight", original)
    assert_clean(engine, before)
    assert np.abs(run(engine, spec(loras["a"]), spec(loras["b"], 0.5)) - alone).max() <= 1  # and it serves as before


def test_out_of_memory_mid_generation_leaves_the_pipeline_serving(engine, loras):
    before = base_weights(engine)
    alone = run(engine, spec(loras["a"]))
    run(engine)
    steps = {"count": 0}

    def second_step_runs_out(module, args, kwargs):
        steps["count"] += 1
        if steps["count"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected at step 2)")

    handle = engine.pipe.transformer.register_forward_pre_hook(second_step_runs_out, with_kwargs=True)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            run(engine, spec(loras["a"]), spec(loras["d"], -0.4))
    finally:
        handle.remove()
    assert steps["count"] == 2
    assert_clean(engine, before)
    assert np.abs(run(engine, spec(loras["a"])) - alone).max() <= 1


# -- a Hub that fails or hangs ------------------------------------------------------------------------


@pytest.fixture
def space(online_settings, make_space) -> LoraSpace:
    write_lora(online_settings.lora_dir / "ink.safetensors", 1)
    return make_space(online_settings, cache_size=2)


@pytest.mark.parametrize("fault", ["500", "stall"])
def test_a_failing_hub_fails_only_the_calls_that_need_it(space, hub, tmp_path, monkeypatch, fault):
    hub.add_model("alice/style", files={"style.safetensors": write_lora(tmp_path / "s.safetensors", 5)})
    before = base_weights(space.engine)
    if fault == "500":
        hub.outage = 500
        match = "HTTP 500"
    else:
        monkeypatch.setattr(hub_http, "TIMEOUT_S", 0.5)
        hub.stall = 3.0
        match = "Cannot reach the Hub"
    with pytest.raises(HubError, match=match):
        space.generate("a cat", [{"source": "alice/style", "strength": 0.7}, {"source": "ink", "strength": 0.5}], TINY)
    output = space.generate("a cat", [{"source": "ink", "strength": 0.5}], TINY)  # the library still serves
    assert output.files and Path(output.files[0]).is_file()
    hub.outage, hub.stall = None, 0.0
    assert space.generate("a cat", [{"source": "alice/style", "strength": 0.7}], TINY).files  # and the Hub again, once back
    assert_clean(space.engine, before)
