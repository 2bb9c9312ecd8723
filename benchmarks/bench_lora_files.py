"""LoRA file benchmarks (issue: LoRA files), measured in one run on this CPU. Prints:

1. Resizing a rank-32 LoRA on every linear module of FLUX.1-dev (random weights): the time,
   and the energy kept at ranks 16 and 8.
2. Inspecting a ~100 MB FLUX.1-dev LoRA on the local Hub stand-in: bytes served and time,
   against a full download of the same file.

    python benchmarks/bench_lora_files.py
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("HF_HUB_OFFLINE", None)  # huggingface_hub reads it once, at import
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
    os.environ.pop(_name, None)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from huggingface_hub import constants
from safetensors.torch import save

from lora_space.core.settings import FLUX_DEV, Settings
from lora_space.hub.client import HubClient
from lora_space.library.inspect import inspect_source
from lora_space.lora.export import lora_tensors
from lora_space.lora.optimize import optimize
from lora_space.lora.shapes import known_bases
from lora_space.lora.synthetic import random_lora
from tests.hub_standin import HubStandIn

TARGET_BYTES = 100 * 10**6
REPO = "bench/flux-style-lora"


def bench_inspect(folder: Path) -> None:
    """2. Header-only inspection against a full download, both from the stand-in."""
    dev = known_bases()[0]
    transformer = {name: shape for name, shape in dev.modules.items() if name.startswith("transformer.")}
    def kohya(rank: int) -> tuple[dict, dict]:
        lora = random_lora(transformer, rank=rank, alpha=float(rank), dtype=torch.bfloat16)
        return lora_tensors(lora, "kohya")[:2]

    per_rank = len(save(kohya(1)[0]))  # the file grows linearly with the rank
    rank = math.ceil(TARGET_BYTES / per_rank)
    tensors, metadata = kohya(rank)
    data = save(tensors, metadata={**metadata, "ss_network_dim": str(rank), "ss_network_alpha": str(rank)})
    constants.HF_TOKEN_PATH = str(folder / "no-saved-token")
    with HubStandIn(root=folder / "hub") as stand_in:
        stand_in.add_model(REPO, files={"style.safetensors": data, "README.md": "---\ninstance_prompt: stl\n---\n"})
        settings = Settings(base_model=FLUX_DEV, lora_dir=folder / "loras", data_dir=folder / "data", hf_endpoint=stand_in.endpoint)
        inspect_source(REPO, settings=settings)  # warm-up: imports, meta-device shapes
        stand_in.reset_log()
        started = time.perf_counter()
        report = inspect_source(REPO, settings=settings)
        inspect_seconds = time.perf_counter() - started
        header_bytes = stand_in.bytes_served("/resolve/")
        stand_in.reset_log()
        started = time.perf_counter()
        HubClient(stand_in.endpoint).download(REPO, "style.safetensors", cache_dir=folder / "cache")
        download_seconds = time.perf_counter() - started
        download_bytes = stand_in.bytes_served("/resolve/")
    print(f"2. Inspect a {len(data) / 1e6:.1f} MB kohya LoRA (FLUX.1-dev, rank {rank}, {len(tensors)} tensors) on the Hub stand-in")
    print(f"   header only : {header_bytes:>12,} bytes read in {inspect_seconds:6.3f} s  "
          f"(format {report.format}, rank {report.rank}, coverage {report.coverage:.2f}, guess {report.base_model_guess})")
    print(f"   full download: {download_bytes:>12,} bytes read in {download_seconds:6.3f} s")
    print(f"   ratio        : {download_bytes / max(header_bytes, 1):,.0f}x fewer bytes, "
          f"{download_seconds / inspect_seconds:.1f}x less time")


def bench_resize() -> None:
    """1. SVD resize of a rank-32 LoRA on every linear module of FLUX.1-dev's transformer."""
    dev = known_bases()[0]
    transformer = {name: shape for name, shape in dev.modules.items() if name.startswith("transformer.")}
    lora = random_lora(transformer, rank=32, alpha=32.0)
    size = sum(m.A.numel() + m.B.numel() for m in lora.modules.values()) * 4
    print(f"1. Resize a rank-32 fp32 LoRA on all {len(lora.modules)} linear modules of FLUX.1-dev ({size / 1e6:.0f} MB), "
          f"{torch.get_num_threads()} CPU threads")
    for rank in (16, 8):
        started = time.perf_counter()
        _, report = optimize(lora, rank=rank)
        seconds = time.perf_counter() - started
        worst = min(m.energy_kept for m in report.modules)
        print(f"   rank {rank:>2}: {seconds:6.2f} s, energy kept {report.energy_kept:.4f} overall "
              f"(lowest module {worst:.4f}), weights {report.bytes_before / 1e6:.0f} -> {report.bytes_after / 1e6:.0f} MB")
    started = time.perf_counter()
    _, report = optimize(lora, energy=0.9)
    ranks = sorted({m.rank_after for m in report.modules})
    print(f"   energy 0.9: {time.perf_counter() - started:6.2f} s, ranks chosen {ranks[0]}..{ranks[-1]}, "
          f"energy kept {report.energy_kept:.4f}")
    print("   (random weights have a flat spectrum; trained LoRAs keep far more energy at a given rank)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    bench_resize()
    with tempfile.TemporaryDirectory() as folder:
        bench_inspect(Path(folder))


if __name__ == "__main__":
    main()
