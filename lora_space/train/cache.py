"""Latents and caption embeddings, computed once per job (the VAE and text encoders then rest).

Each image is resized to cover its aspect-ratio bucket at the training resolution,
centre-cropped, and encoded; its posterior mean and standard deviation are kept, already
normalised with the VAE's shift and scale, so a step draws `mean + std * noise` as diffusers'
recipe does from its cached `latent_dist`. Each distinct caption is encoded once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..lora.export import save_tensors
from ..lora.safefile import load_lora_file
from .checkpoint import JobFiles
from .config import TrainConfig
from .dataset import bucket_size

MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's default, so training sees what generation sends


@dataclass
class Cache:
    means: list[torch.Tensor]  # per row, (1, C, h, w)
    stds: list[torch.Tensor]
    caption_of: list[int]  # row -> caption number
    embeds: torch.Tensor  # (captions, S, D)
    pooled: torch.Tensor  # (captions, D)
    ids: torch.Tensor  # (S, 3)

    def latents(self, index: int, *, generator: torch.Generator | None) -> torch.Tensor:
        """Row `index`'s latents: a draw from its posterior (the mean when `generator` is None)."""
        mean = self.means[index]
        if generator is None:
            return mean
        return mean + self.stds[index] * torch.randn(mean.shape, generator=generator).to(mean.device)

    def text(self, rows: list[int]) -> dict[str, torch.Tensor]:
        numbers = torch.tensor([self.caption_of[index] for index in rows])
        return {"embeds": self.embeds[numbers], "pooled": self.pooled[numbers], "ids": self.ids}

    def to(self, device) -> Cache:
        move = lambda tensors: [tensor.to(device) for tensor in tensors]  # noqa: E731
        return Cache(move(self.means), move(self.stds), self.caption_of, self.embeds.to(device), self.pooled.to(device), self.ids.to(device))

    def save(self, path: Path) -> None:
        tensors = {f"mean.{i}": t.cpu() for i, t in enumerate(self.means)} | {f"std.{i}": t.cpu() for i, t in enumerate(self.stds)}
        tensors |= {"embeds": self.embeds.cpu(), "pooled": self.pooled.cpu(), "ids": self.ids.cpu()}
        save_tensors(path, tensors, {"caption_of": json.dumps(self.caption_of)})

    @classmethod
    def load(cls, path: Path, device) -> Cache:
        tensors, metadata = load_lora_file(path)
        caption_of = json.loads(metadata["caption_of"])
        rows = range(len(caption_of))
        cache = cls([tensors[f"mean.{i}"] for i in rows], [tensors[f"std.{i}"] for i in rows], caption_of, tensors["embeds"], tensors["pooled"], tensors["ids"])
        return cache.to(device)


def load_pixels(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """An image resized to cover `size` (width, height), centre-cropped, as (1, 3, H, W) in -1..1."""
    width, height = size
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = max(width / image.width, height / image.height)
        resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.Resampling.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    array = np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def build_cache(pipe, rows: list[dict], files: JobFiles, config: TrainConfig) -> Cache:
    """Encode every image and caption of the job once and save the result in the job folder."""
    vae, device = pipe.vae, pipe.vae.device
    shift, scale = vae.config.shift_factor or 0.0, vae.config.scaling_factor
    means, stds = [], []
    with torch.no_grad():
        for row in rows:
            pixels = load_pixels(files.root / row["image"], bucket_size(row["bucket"], config.resolution))
            posterior = vae.encode(pixels.to(device, vae.dtype)).latent_dist
            means.append(((posterior.mean.float() - shift) * scale).cpu())
            stds.append((posterior.std.float() * scale).cpu())
        captions = sorted({row["caption"] for row in rows})
        embeds, pooled = [], []
        for caption in captions:
            prompt_embeds, pooled_embeds, text_ids = pipe.encode_prompt(
                prompt=caption, prompt_2=None, device=pipe.text_encoder.device, max_sequence_length=MAX_SEQUENCE_LENGTH
            )
            embeds.append(prompt_embeds.float().cpu())
            pooled.append(pooled_embeds.float().cpu())
    cache = Cache(means, stds, [captions.index(row["caption"]) for row in rows], torch.cat(embeds), torch.cat(pooled), text_ids.float().cpu())
    cache.save(files.cache)
    return cache


class LiveEncoder:
    """The `Cache` interface without a cache: each step encodes its images and captions again.

    For `cache_latents: false` (and the benchmark's comparison); the VAE and text encoders stay
    on the device, as in diffusers' recipe without `--cache_latents`.
    """

    def __init__(self, pipe, rows: list[dict], files: JobFiles, config: TrainConfig) -> None:
        self.pipe, self.rows, self.files, self.config = pipe, rows, files, config

    def latents(self, index: int, *, generator: torch.Generator | None) -> torch.Tensor:
        vae, row = self.pipe.vae, self.rows[index]
        shift, scale = vae.config.shift_factor or 0.0, vae.config.scaling_factor
        pixels = load_pixels(self.files.root / row["image"], bucket_size(row["bucket"], self.config.resolution))
        with torch.no_grad():
            posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        mean, std = (posterior.mean.float() - shift) * scale, posterior.std.float() * scale
        if generator is None:
            return mean
        return mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)

    def text(self, rows: list[int]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            embeds, pooled, ids = self.pipe.encode_prompt(
                prompt=[self.rows[index]["caption"] for index in rows], prompt_2=None,
                device=self.pipe.text_encoder.device, max_sequence_length=MAX_SEQUENCE_LENGTH,
            )  # fmt: skip
        return {"embeds": embeds.float(), "pooled": pooled.float(), "ids": ids.float()}
