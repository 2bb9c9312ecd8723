"""The GPU packages (bitsandbytes, torchao) on a CPU: installed by requirements.txt, never needed here,
and every fallback they stand behind is reported, not hidden."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from lora_space.core.errors import TrainConfigError
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.train.__main__ import base_quantization, load_pipeline
from lora_space.train.config import TrainConfig
from lora_space.train.steps import attach_adapter, flow_matching_loss, make_optimizer


def test_requirements_install_the_gpu_packages_everywhere_cuda_can_run():
    if sys.platform != "darwin":  # requirements.txt: `platform_system != "Darwin"`
        assert importlib.util.find_spec("bitsandbytes") is not None
        assert importlib.util.find_spec("torchao") is not None
    assert not torch.cuda.is_available()  # the premise of the fallbacks below


def test_without_cuda_every_gpu_setting_falls_back_and_the_job_report_says_so():
    # The real detection (no `bnb_available` given): the packages are installed, CUDA is not.
    config = TrainConfig.from_dict({"optimizer_type": "AdamW8bit", "quantize_base": "nf4"}, is_tiny=False)
    assert (config.optimizer_type, config.quantize_base) == ("AdamW", "none")
    assert any("AdamW8bit needs bitsandbytes on a CUDA GPU" in note for note in config.notes)
    assert any("quantize_base nf4 needs bitsandbytes on a CUDA GPU" in note for note in config.notes)
    fp8 = TrainConfig.from_dict({"quantize_base": "fp8"}, is_tiny=False)
    assert fp8.quantize_base == "none"
    assert fp8.notes == ["quantize_base fp8 needs torchao on a CUDA GPU, which this machine lacks: the base stays unquantised."]
    # Where the packages run, nothing falls back.
    kept = TrainConfig.from_dict({"quantize_base": "fp8"}, is_tiny=False, torchao_available=True)
    assert (kept.quantize_base, kept.notes) == ("fp8", [])


def test_the_trainer_uses_adamw_on_a_cpu_even_with_bitsandbytes_installed_and_says_so():
    parameters = [torch.nn.Parameter(torch.zeros(3))]
    optimizer, note = make_optimizer(parameters, TrainConfig(model_name="tiny", optimizer_type="AdamW8bit"), torch.device("cpu"))
    assert type(optimizer) is torch.optim.AdamW
    assert note == "AdamW8bit needs bitsandbytes on a CUDA GPU; this run uses AdamW."


def test_a_quantised_base_is_refused_on_a_cpu_with_the_fix_named():
    with pytest.raises(TrainConfigError, match="quantize_base nf4 needs a CUDA GPU; set it to none"):
        load_pipeline("tiny", "nf4", torch.device("cpu"))


def test_the_fp8_base_loads_through_diffusers_and_trains_a_lora(tmp_path):
    # diffusers 0.42 takes a torchao config object (a name such as "float8wo_e4m3" is a TypeError).
    # fp8 weights also run on a CPU, so the whole path is checked here: load, attach, one backward.
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from torchao.quantization import Float8Tensor

    build_tiny_pipeline().transformer.save_pretrained(tmp_path)
    transformer = FluxTransformer2DModel.from_pretrained(tmp_path, quantization_config=base_quantization("fp8"), torch_dtype=torch.bfloat16)
    assert isinstance(transformer.transformer_blocks[0].attn.to_q.weight, Float8Tensor)
    config = TrainConfig(model_name="tiny", resolution=64, network_dim=4, network_alpha=4)
    parameters = attach_adapter(transformer, config, "fp8_test", seed=0)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    text = {"embeds": torch.randn(1, 16, 32, generator=generator), "pooled": torch.randn(1, 32, generator=generator), "ids": torch.zeros(16, 3)}
    schedule = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    loss = flow_matching_loss(transformer, latents, torch.randn(latents.shape, generator=generator), torch.tensor([10]), schedule, text)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in parameters.values())


def test_an_unknown_quantization_is_named():
    with pytest.raises(TrainConfigError, match="quantize_base 'int3' is unknown"):
        base_quantization("int3")
