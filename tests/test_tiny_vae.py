"""The tiny VAE carries colour: latents are a fixed linear map of the colours, and decoding inverts it."""

from __future__ import annotations

import numpy as np
import torch

from lora_space.tiny.model import LATENT_FROM_RGB


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
