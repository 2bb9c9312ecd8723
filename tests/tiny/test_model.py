"""The tiny FLUX pipeline: FLUX's architecture, deterministic, a save/load round trip, and a VAE that carries colour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel

from lora_space.core.errors import BaseModelError
from lora_space.core.settings import Settings
from lora_space.generate.base_model import load_base_pipeline
from lora_space.tiny.draw import build_drawing_pipeline
from lora_space.tiny.model import LATENT_FROM_RGB, build_tiny_pipeline

REPO = Path(__file__).resolve().parents[2]


def run(pipe: FluxPipeline, seed: int = 1) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return pipe("a watercolor cat", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np").images


def test_tiny_is_a_flux_pipeline_with_guidance_embeds(tiny_pipe):
    assert isinstance(tiny_pipe, FluxPipeline)
    assert isinstance(tiny_pipe.transformer, FluxTransformer2DModel)
    assert tiny_pipe.transformer.config.guidance_embeds is True
    assert tiny_pipe.transformer.config.in_channels == 4 * tiny_pipe.vae.config.latent_channels


def test_same_seed_same_image_other_seed_other_image(tiny_pipe):
    first, again, other = run(tiny_pipe, 1), run(tiny_pipe, 1), run(tiny_pipe, 2)
    assert first.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_two_builds_have_the_same_weights():
    first, second = build_tiny_pipeline(), build_tiny_pipeline()
    for name, tensor in first.transformer.state_dict().items():
        assert torch.equal(tensor, second.transformer.state_dict()[name]), name


def test_cli_writes_a_folder_that_loads_the_same_drawing_model(tmp_path):
    folder = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "lora_space.tiny", str(folder)], cwd=REPO, check=True, timeout=120)
    settings = Settings.from_env(
        {"LORA_SPACE_BASE_MODEL": str(folder), "LORA_SPACE_DATA_DIR": str(tmp_path / "d"), "LORA_SPACE_LORA_DIR": str(tmp_path / "l")}
    )
    loaded = load_base_pipeline(settings)  # the word-level tokenizers and the weights, through save_pretrained
    assert loaded.tokenizer_2.convert_ids_to_tokens(loaded.tokenizer_2("a red circle").input_ids) == ["\u2581a", "\u2581red", "\u2581circle", "</s>"]
    np.testing.assert_allclose(run(loaded), run(build_drawing_pipeline()), atol=1e-5)


def test_a_folder_that_is_not_flux_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    settings = Settings.from_env(
        {"LORA_SPACE_BASE_MODEL": str(tmp_path), "LORA_SPACE_DATA_DIR": str(tmp_path / "d"), "LORA_SPACE_LORA_DIR": str(tmp_path / "l")}
    )
    with pytest.raises(BaseModelError, match="not a FLUX pipeline"):
        load_base_pipeline(settings)


# --------------------------------------------------------------------------------------------------
# The tiny VAE carries colour: latents are a fixed linear map of the colours, and decoding inverts it.
def test_encode_is_the_colour_map_and_decode_inverts_it(tiny_pipe):
    vae = tiny_pipe.vae
    generator = torch.Generator().manual_seed(0)
    blocks = torch.rand(1, 3, 16, 24, generator=generator) * 2 - 1  # one colour per 2x2 block: what the latent keeps
    image = blocks.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    with torch.no_grad():
        latents = vae.encode(image).latent_dist.sample(generator)
        decoded = vae.decode(latents).sample
    expected = torch.einsum("lc,bchw->blhw", torch.tensor(LATENT_FROM_RGB), blocks)
    torch.testing.assert_close(latents, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(decoded, image, atol=1e-4, rtol=1e-4)


def test_a_generated_image_has_colour_regions_not_pixel_noise(tiny_pipe):
    generator = torch.Generator().manual_seed(1)
    image = tiny_pipe("a red circle", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np").images[0]
    # Nearest upsampling of the latent: every 2x2 block is one colour, unlike a random VAE's noise.
    assert np.abs(image[0::2, 0::2] - image[1::2, 1::2]).max() < 1e-3
    assert image.std() > 0.01
