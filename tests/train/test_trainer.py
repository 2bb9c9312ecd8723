"""The trainer on the tiny model: it learns (loss falls, a red dataset makes images red), its LoRA
loads in Generate, a killed run resumes to the same weights, and the engine is lent and given back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lora_space.generate.engine import Engine
from lora_space.generate.request import GenerationRequest, LoraSpec, Options
from lora_space.lora.safefile import load_lora_file, read_local_header
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.train.checkpoint import read_json
from lora_space.train.steps import overfitting_warning
from lora_space.train.trainer import run_chunk
from tests.train_factory import colour_zip, job_folder, mean_colour

OPTIONS = Options(seed=5, steps=4, width=64, height=64)


@pytest.fixture(scope="module")
def red_zip(tmp_path_factory):
    return colour_zip(tmp_path_factory.mktemp("zips") / "red.zip")


def redness(colour: np.ndarray) -> float:
    return float(colour[0] - (colour[1] + colour[2]) / 2)


def image(engine: Engine, *loras: LoraSpec) -> np.ndarray:
    request = GenerationRequest(prompt="redstyle, a picture", options=OPTIONS, loras=loras)
    return np.asarray(engine.generate(request).images[0], dtype=np.float64)


def test_training_learns_the_colour_and_its_lora_loads_in_generate(tmp_path, red_zip):
    files = job_folder(tmp_path / "job", red_zip, max_train_steps=30, trigger_word="redstyle", validation_prompts=["redstyle, a picture"])
    pipe = build_tiny_pipeline()
    result = run_chunk(pipe, files.root, adapter_name="train_test")
    assert result.finished and result.step == 30
    # 1. The loss is finite and falls; the held-out image has a validation loss.
    progress = read_json(files.progress)
    losses = [value for _, value in progress["loss"]]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert progress["val_loss"] and all(np.isfinite(value) for _, value in progress["val_loss"])
    # 2. Same seed, same prompt: the strength-1 sample is much redder than the strength-0 one.
    at_zero, at_one = (mean_colour(files.samples / name) for name in sorted(progress["samples"]))
    assert "strength0" in sorted(progress["samples"])[0]
    assert redness(at_one) > redness(at_zero) + 30, (at_zero, at_one)
    # 3. The file is a diffusers LoRA with its config and training facts in the header.
    header = read_local_header(files.final)
    assert header.metadata["ss_network_dim"] == "4" and header.metadata["ss_max_train_steps"] == "30"
    assert header.metadata["trigger_word"] == "redstyle" and header.metadata["ss_sd_model_name"] == "tiny"
    assert json.loads(header.metadata["lora_adapter_metadata"])["transformer.r"] == 4
    assert all(name.startswith("transformer.") for name in header.tensors)
    # 4. It loads in the engine, changes the image toward red, and strength 0 is the base image.
    assert pipe.get_list_adapters() == {}  # the trainer took its adapter away
    engine = Engine(pipe)
    spec = LoraSpec(key=str(files.final), file=str(files.final), name="red", strength=1.0)
    base, with_lora = image(engine), image(engine, spec)
    assert redness(with_lora.mean(axis=(0, 1))) > redness(base.mean(axis=(0, 1))) + 30
    assert np.array_equal(image(engine, LoraSpec(spec.key, spec.file, spec.name, 0.0)), base)


class Killed(Exception):
    """Stands for the process dying: raised from inside the loop, so nothing after it is saved."""


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, red_zip):
    pipe = build_tiny_pipeline()
    settings = dict(max_train_steps=12, validation_split=0.2, checkpoint_every=4, lr_scheduler="cosine", lr_warmup_steps=2)
    whole = job_folder(tmp_path / "whole", red_zip, **settings)
    run_chunk(pipe, whole.root, adapter_name="a")
    broken = job_folder(tmp_path / "broken", red_zip, **settings)
    first = run_chunk(pipe, broken.root, adapter_name="b", max_steps=5)  # a chunk: state saved at step 5
    assert (first.step, first.finished) == (5, False)
    calls = iter(range(100))

    def die_after_three_steps() -> bool:
        if next(calls) == 3:
            raise Killed
        return False

    with pytest.raises(Killed):
        run_chunk(pipe, broken.root, adapter_name="b", should_stop=die_after_three_steps)
    assert read_json(broken.progress)["step"] == 8  # three steps ran past the state, then the process "died"
    resumed = run_chunk(pipe, broken.root, adapter_name="c")  # picks up at step 5
    assert resumed.finished and resumed.step == 12
    expected, _ = load_lora_file(whole.final)
    got, _ = load_lora_file(broken.final)
    assert expected.keys() == got.keys()
    for name in expected:  # exactly equal: same data order, noise, optimizer and schedule state
        assert torch.equal(expected[name], got[name]), name
    assert read_json(whole.progress)["loss"] == read_json(broken.progress)["loss"]
    assert pipe.get_list_adapters() == {}


def test_the_engine_lends_its_pipeline_and_gets_it_back_unchanged(tmp_path, red_zip):
    from tests.lora_factory import write_lora

    engine = Engine(build_tiny_pipeline(), fuse_after=2)
    lora = write_lora(tmp_path / "ink.safetensors", 3)
    spec = LoraSpec(key=str(lora), file=str(lora), name="ink", strength=0.8)
    image(engine, spec)
    fused_before = image(engine, spec)  # the repeated mix is fused now
    assert engine._fused_mix is not None
    weights = {name: tensor.clone() for name, tensor in engine.pipe.transformer.state_dict().items()}
    grads = [parameter.requires_grad for parameter in engine.pipe.transformer.parameters()]
    files = job_folder(tmp_path / "job", red_zip, max_train_steps=6)
    with engine.lend() as pipe:
        assert engine._fused_mix is None  # the borrower sees the base model
        run_chunk(pipe, files.root, adapter_name="train_lend")
    assert engine._fused_mix is not None and engine.loaded_adapters() == ["lora_0"]
    after = engine.pipe.transformer.state_dict()
    assert weights.keys() == after.keys()
    for name, tensor in weights.items():  # base and fused weights bit for bit
        assert torch.equal(tensor, after[name]), name
    assert [parameter.requires_grad for parameter in engine.pipe.transformer.parameters()] == grads
    assert np.array_equal(image(engine, spec), fused_before)
    assert np.array_equal(image(engine), image(Engine(build_tiny_pipeline())))


def test_overfitting_is_flagged_when_validation_rises_while_training_falls():
    falling = [[step, 1.0 - step / 100] for step in range(1, 41)]
    rising = [[10, 0.5], [20, 0.55], [30, 0.6], [40, 0.65]]
    assert "overfitting" in overfitting_warning(falling, rising)
    assert overfitting_warning(falling, [[10, 0.5], [20, 0.45], [30, 0.6], [40, 0.65]]) is None
    flat = [[step, 0.5] for step in range(1, 41)]
    assert overfitting_warning(flat, rising) is None


def test_without_the_cache_each_step_encodes_again_and_learns_the_same(tmp_path, red_zip):
    pipe = build_tiny_pipeline()
    cached = job_folder(tmp_path / "cached", red_zip, max_train_steps=6)
    live = job_folder(tmp_path / "live", red_zip, max_train_steps=6, cache_latents=False)
    run_chunk(pipe, cached.root, adapter_name="cached")
    run_chunk(pipe, live.root, adapter_name="live")
    assert cached.cache.exists() and not live.cache.exists()
    np.testing.assert_allclose(
        [value for _, value in read_json(live.progress)["loss"]], [value for _, value in read_json(cached.progress)["loss"]], rtol=1e-4
    )
