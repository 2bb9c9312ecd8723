"""Blends that travel, measured in one run on this CPU. Prints:

1. Baking two rank-16 bf16 LoRAs on every linear module of FLUX.1-dev's transformer (random
   weights): the exact bake (rank 32, concatenation only) against SVD bakes to ranks 16 and 8,
   with the energy each keeps and the file size.
2. A1111's `Lora hashes` value of a ~100 MB LoRA: hashing the file against the cached value a
   restarted app reads back (`hashes.HashCache`).

    python benchmarks/bench_bake.py
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors.torch import save_file

from lora_space.library.hashes import HashCache
from lora_space.lora.bake import BakePart, bake
from lora_space.lora.shapes import known_bases
from lora_space.lora.synthetic import random_lora

TARGET_BYTES = 100 * 10**6


def _megabytes(lora) -> float:
    return sum(m.A.numel() * m.A.element_size() + m.B.numel() * m.B.element_size() for m in lora.modules.values()) / 1e6


def bench_bake() -> None:
    """1. Exact bake against SVD bakes of the same two FLUX.1-dev-sized LoRAs."""
    dev = known_bases()[0]
    transformer = {name: shape for name, shape in dev.modules.items() if name.startswith("transformer.")}
    parts = [
        BakePart("style", random_lora(transformer, rank=16, alpha=16.0, seed=1, dtype=torch.bfloat16), 0.8),
        BakePart("detail", random_lora(transformer, rank=16, alpha=8.0, seed=2, dtype=torch.bfloat16), 0.4),
    ]
    size = sum(_megabytes(part.lora) for part in parts)
    print(f"1. Bake two rank-16 bf16 LoRAs on all {len(transformer)} linear modules of FLUX.1-dev ({size:.0f} MB together), "
          f"{torch.get_num_threads()} CPU threads")
    timings = {}
    for rank in (0, 16, 8):
        started = time.perf_counter()
        baked, report = bake(parts, base=dev, rank=rank)
        timings[rank] = time.perf_counter() - started
        worst = min(module.energy_kept for module in report.modules)
        label = "exact (rank 32)" if rank == 0 else f"SVD rank {rank:>2}  "
        print(f"   {label}: {timings[rank]:6.2f} s, energy kept {report.energy_kept:.4f} (lowest module {worst:.4f}), "
              f"file {_megabytes(baked):.0f} MB")
    print(f"   ratio: the SVD bake to rank 16 takes {timings[16] / timings[0]:.1f}x the exact bake's time")
    print("   (random weights have a flat spectrum; trained LoRAs keep far more energy at a given rank)")


def bench_hash(folder: Path) -> None:
    """2. Hashing a ~100 MB LoRA file once, then reading the cached value back."""
    dev = known_bases()[0]
    transformer = {name: shape for name, shape in dev.modules.items() if name.startswith("transformer.")}
    per_rank = sum(shape[0] + shape[1] for shape in transformer.values()) * 2  # bf16 bytes per unit of rank
    lora = random_lora(transformer, rank=math.ceil(TARGET_BYTES / per_rank), dtype=torch.bfloat16)
    path = folder / "style.safetensors"
    tensors = {}
    for name, module in lora.modules.items():
        tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = module.A, module.B
    save_file(tensors, str(path))
    cache_file = folder / "data" / "cache" / "file_hashes.json"
    started = time.perf_counter()
    value = HashCache(cache_file).lora_hash(path)
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = HashCache(cache_file).lora_hash(path)  # a fresh cache, as after a restart: reads the JSON
    cached = time.perf_counter() - started
    assert again == value
    print(f"2. A1111 hash ({value[:12]}) of a {path.stat().st_size / 1e6:.0f} MB LoRA")
    print(f"   first time (reads the file): {first * 1e3:8.1f} ms")
    print(f"   cached (size + mtime match): {cached * 1e3:8.1f} ms   ratio {first / cached:,.0f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    bench_bake()
    with tempfile.TemporaryDirectory() as folder:
        bench_hash(Path(folder))


if __name__ == "__main__":
    main()
