"""Latents and caption embeddings, computed once per job (the VAE and text encoders then rest).

Each image is resized to cover its aspect-ratio bucket at the training resolution,
centre-cropped, and encoded; its posterior mean and standard deviation are kept, already
normalised with the VAE's shift and scale, so a step draws `mean + std * noise` as diffusers'
recipe does from its cached `latent_dist`. Each distinct caption is encoded once.

The cache is built one piece at a time (`CacheBuilder`: one image or one caption), each piece
written at once as its own file in the job's `cache/` folder, so a training chunk can stop
between pieces (a generation waits, its time is up) and the next chunk, in this process or a
fresh one, goes on with the first piece missing.
"""

from __future__ import annotations

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


def caption_list(rows: list[dict]) -> list[str]:
    """The job's distinct captions, in the cache's order."""
    return sorted({row["caption"] for row in rows})


class CacheBuilder:
    """The job's cache, built one image or caption at a time (`build_next`), each piece kept on disk.

    Args:
        pipe: the pipeline whose VAE and text encoders encode (on their devices).
        rows: the job's dataset rows.
        files: the job folder; pieces go to `files.cache`.
        config: the job's config (training resolution).
    """

    def __init__(self, pipe, rows: list[dict], files: JobFiles, config: TrainConfig) -> None:
        self.pipe, self.rows, self.files, self.config = pipe, rows, files, config
        self.captions = caption_list(rows)
        pieces = [("image", index) for index in range(len(rows))] + [("caption", index) for index in range(len(self.captions))]
        self.todo = [piece for piece in pieces if not self._path(*piece).exists()]
        self._built: dict[tuple[str, int], dict[str, torch.Tensor]] = {}  # what this process encoded (no reading back)

    @property
    def complete(self) -> bool:
        return not self.todo

    def build_next(self) -> None:
        """Encode the first missing image or caption and write its file."""
        kind, index = self.todo[0]
        with torch.no_grad():
            tensors = self._image(self.rows[index]) if kind == "image" else self._caption(self.captions[index])
        self.files.cache.mkdir(exist_ok=True)
        save_tensors(self._path(kind, index), tensors, {"format": "pt"})
        self._built[(kind, index)] = tensors
        self.todo.pop(0)

    def cache(self, device) -> Cache:
        """The complete cache on `device` (pieces this process built are not read back)."""
        if not self.complete:
            raise RuntimeError("the cache is not complete yet")

        def piece(kind: str, index: int) -> dict[str, torch.Tensor]:
            return self._built.get((kind, index)) or load_lora_file(self._path(kind, index))[0]

        images = [piece("image", index) for index in range(len(self.rows))]
        texts = [piece("caption", index) for index in range(len(self.captions))]
        cache = Cache(
            [image["mean"] for image in images], [image["std"] for image in images],
            [self.captions.index(row["caption"]) for row in self.rows],
            torch.cat([text["embeds"] for text in texts]), torch.cat([text["pooled"] for text in texts]), texts[0]["ids"],
        )  # fmt: skip
        return cache.to(device)

    def _path(self, kind: str, index: int) -> Path:
        return self.files.cache / f"{kind}_{index:06d}.safetensors"

    def _image(self, row: dict) -> dict[str, torch.Tensor]:
        vae = self.pipe.vae
        shift, scale = vae.config.shift_factor or 0.0, vae.config.scaling_factor
        pixels = load_pixels(self.files.root / row["image"], bucket_size(row["bucket"], self.config.resolution))
        posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return {"mean": ((posterior.mean.float() - shift) * scale).cpu(), "std": (posterior.std.float() * scale).cpu()}

    def _caption(self, caption: str) -> dict[str, torch.Tensor]:
        prompt_embeds, pooled_embeds, text_ids = self.pipe.encode_prompt(
            prompt=caption, prompt_2=None, device=self.pipe.text_encoder.device, max_sequence_length=MAX_SEQUENCE_LENGTH
        )
        return {"embeds": prompt_embeds.float().cpu(), "pooled": pooled_embeds.float().cpu(), "ids": text_ids.float().cpu()}


def build_cache(pipe, rows: list[dict], files: JobFiles, config: TrainConfig) -> Cache:
    """Encode every image and caption of the job not yet in `files.cache` (the CLI's first step)."""
    builder = CacheBuilder(pipe, rows, files, config)
    while not builder.complete:
        builder.build_next()
    return builder.cache("cpu")


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
