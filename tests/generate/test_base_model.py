"""Loading the base model from a Hub id (the stand-in), with a clear message for each failure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lora_space.core.errors import BaseModelError
from lora_space.generate.base_model import load_base_pipeline
from lora_space.tiny.__main__ import save_tiny


@pytest.fixture
def tiny_files(tmp_path):
    folder = save_tiny(tmp_path / "tiny-flux")
    return {path.relative_to(folder).as_posix(): path for path in folder.rglob("*") if path.is_file()}


def hub_settings(settings, hub, repo_id: str, **changes):
    return dataclasses.replace(settings, **({"base_model": repo_id, "hf_endpoint": hub.endpoint, "hf_offline": False} | changes))


def test_a_flux_repo_on_the_hub_loads_and_generates(settings, hub, tiny_files, tiny_pipe):
    hub.add_model("test-org/tiny-flux", files=tiny_files | {"flux1-tiny.safetensors": b"single-file checkpoint, skipped"})
    pipe = load_base_pipeline(hub_settings(settings, hub, "test-org/tiny-flux"))
    generator = torch.Generator().manual_seed(2)
    image = pipe("a kite", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np").images
    expected = tiny_pipe("a kite", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(2), output_type="np").images
    np.testing.assert_allclose(image, expected, atol=1e-5)
    assert not any("flux1-tiny.safetensors" in request.path for request in hub.requests)  # diffusers files only


def test_a_gated_repo_says_to_accept_the_licence(settings, hub, tiny_files):
    hub.add_model("test-org/gated-flux", files=tiny_files, gated="manual")
    with pytest.raises(BaseModelError, match="gated: accept its licence"):
        load_base_pipeline(hub_settings(settings, hub, "test-org/gated-flux"))


def test_an_unknown_repo_says_so(settings, hub):
    with pytest.raises(BaseModelError, match="No model test-org/nothing"):
        load_base_pipeline(hub_settings(settings, hub, "test-org/nothing"))


def test_offline_without_a_cached_copy_says_how_to_fix_it(settings, hub, tiny_files, monkeypatch):
    hub.add_model("test-org/tiny-flux", files=tiny_files)
    with pytest.raises(BaseModelError, match="offline or no network"):
        load_base_pipeline(hub_settings(settings, hub, "test-org/tiny-flux", hf_offline=True))


def test_a_repo_that_is_not_flux_is_refused(settings, hub):
    hub.add_model("test-org/sdxl", files={"model_index.json": '{"_class_name": "StableDiffusionXLPipeline"}'})
    with pytest.raises(BaseModelError, match="not a FLUX pipeline"):
        load_base_pipeline(hub_settings(settings, hub, "test-org/sdxl"))
