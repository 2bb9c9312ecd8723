"""Hardening: hostile model files, refused by the one safetensors reader on every path.

Each case builds its file in code and asserts the exact outcome on the paths a visitor can
reach: the library listing, an upload, `/inspect_lora` (inspect_source), and the engine.
"""

from __future__ import annotations

import json
import pickle
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_space.core.errors import LoraFileError, UnsafeFileError
from lora_space.library import store as library
from lora_space.library.inspect import inspect_source
from lora_space.library.sources import resolve_source
from lora_space.library.tools import compare_files, convert_source
from lora_space.lora import safefile
from tests.lora_factory import write_lora

SENTINEL_NAME = "unpickled.flag"


def raw_safetensors(path: Path, header: dict, data: bytes = b"", *, sparse_size: int | None = None) -> Path:
    """A file with exactly this JSON header and data (no checks), optionally grown sparsely."""
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded + data)
        if sparse_size is not None:
            handle.truncate(8 + len(encoded) + sparse_size)
    return path


class _Sentinel:
    """Unpickling this creates a file: proof that something unpickled."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (Path(self.flag),))


def pickle_bytes(flag: Path) -> bytes:
    return pickle.dumps({"lora": _Sentinel(str(flag))}, protocol=4)


def torch_zip_bytes(path: Path, flag: Path) -> bytes:
    torch.save({"lora": _Sentinel(str(flag))}, path)
    return path.read_bytes()


def listing(settings) -> dict[str, dict]:
    return {entry.name: entry.to_dict() for entry in library.scan_library(settings.lora_dir)}


def every_reader_refuses(path: Path, settings, match: str) -> None:
    """The listing shows a problem; inspect, resolve-and-load and the conflict check refuse."""
    entry = listing(settings)[path.stem]
    assert entry["format"] == "invalid" and entry["problem"], entry
    assert str(settings.lora_dir) not in entry["problem"]  # hole 10: no server path in problems
    with pytest.raises(LoraFileError, match=match):
        inspect_source(path.stem, settings=settings)
    with pytest.raises(LoraFileError, match=match):
        safefile.load_lora_file(resolve_source(path.stem, settings=settings).file)


# -- hole 1: a metadata value nested 200,000 deep ---------------------------------------------


def test_deeply_nested_metadata_is_a_problem_entry_not_a_broken_listing(settings):
    write_lora(settings.lora_dir / "fine.safetensors", 1)
    write_lora(settings.lora_dir / "deep.safetensors", 2, metadata={"trigger_words": "[" * 200_000})
    entries = listing(settings)
    assert entries["fine"]["problem"] is None and entries["fine"]["format"] == "diffusers"
    assert entries["deep"]["trigger_words"] == [] or entries["deep"]["problem"]
    # and the app's start (build_demo lists the library) does not fail either
    from lora_space.generate.engine import Engine
    from lora_space.service import LoraSpace
    from lora_space.tiny.model import build_tiny_pipeline
    from lora_space.ui.app import build_demo

    build_demo(LoraSpace(settings, Engine(build_tiny_pipeline())))


def test_an_upload_is_checked_before_it_is_written(settings, tmp_path):
    bad = raw_safetensors(tmp_path / "upload" / "bad.safetensors", {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"")
    with pytest.raises(UnsafeFileError, match="outside the file"):
        library.add_to_library(settings.lora_dir, bad)
    assert not list(settings.lora_dir.rglob("*.safetensors"))
    deep = write_lora(tmp_path / "upload" / "deep.safetensors", 3, metadata={"trigger_words": "[" * 200_000})
    entry = library.add_to_library(settings.lora_dir, deep)
    assert entry.name == "deep" and entry.trigger_words == ()
    assert listing(settings)["deep"]["format"] == "diffusers"


# -- hole 2: a rank far above what the shapes allow ---------------------------------------------


def tall_rank_file(path: Path, rank: int, features: int = 1) -> Path:
    return raw_safetensors(
        path,
        {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": {"dtype": "F32", "shape": [rank, features], "data_offsets": [0, 4 * rank * features]},
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": {"dtype": "F32", "shape": [features, rank], "data_offsets": [4 * rank * features, 8 * rank * features]},
        },
        bytes(8 * rank * features),
    )


def test_a_rank_above_the_module_size_is_refused_before_any_allocation(settings):
    path = tall_rank_file(settings.lora_dir / "tall.safetensors", 6000)
    assert path.stat().st_size < 50_000
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(UnsafeFileError, match="rank 6000"):
        compare_files({"tall": path, "other": path})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - started < 1.0 and peak < 20 * 2**20
    every_reader_refuses(path, settings, "rank 6000")


def test_rank_4096_is_refused_even_where_the_shapes_would_allow_it(settings):
    rank = 4096
    header = {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": {"dtype": "F16", "shape": [rank, rank], "data_offsets": [0, 2 * rank * rank]},
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": {"dtype": "F16", "shape": [rank, rank], "data_offsets": [2 * rank * rank, 4 * rank * rank]},
    }
    path = raw_safetensors(settings.lora_dir / "huge_rank.safetensors", header, sparse_size=4 * rank * rank)
    with pytest.raises(UnsafeFileError, match=f"rank {rank}.*at most {safefile.MAX_RANK}"):
        safefile.read_local_header(path)
    every_reader_refuses(path, settings, f"rank {rank}")


# -- hole 12: one reader, one set of bounds ---------------------------------------------------------


def test_the_library_lists_as_invalid_what_the_engine_refuses(settings):
    # 5 MiB of metadata: over the one header bound (4 MiB), so no reader may accept it
    big = write_lora(settings.lora_dir / "big_header.safetensors", 4, metadata={"notes": "x" * (5 * 2**20)})
    entry = listing(settings)["big_header"]
    assert entry["format"] == "invalid" and "MiB" in entry["problem"]
    with pytest.raises(UnsafeFileError):
        safefile.load_lora_file(big)


def test_library_and_hub_use_the_safefile_bounds():
    from lora_space.hub import client

    assert not hasattr(library, "MAX_HEADER_BYTES") and not hasattr(library, "read_header")
    assert client.MAX_HEADER_BYTES == safefile.MAX_HEADER_BYTES


# -- the model-file suite ----------------------------------------------------------------------------


def test_the_sentinel_fires_when_something_unpickles(tmp_path):
    flag = tmp_path / SENTINEL_NAME
    pickle.loads(pickle_bytes(flag))
    assert flag.exists()
    flag.unlink()
    torch_zip_bytes(tmp_path / "check.pt", flag)
    torch.load(tmp_path / "check.pt", weights_only=False)
    assert flag.exists()


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt", ".safetensors"])
@pytest.mark.parametrize("kind", ["pickle", "torch zip"])
def test_a_pickle_is_never_unpickled(settings, tmp_path, suffix, kind):
    flag = tmp_path / SENTINEL_NAME
    content = pickle_bytes(flag) if kind == "pickle" else torch_zip_bytes(tmp_path / "saved.pt", flag)
    path = settings.lora_dir / f"evil{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    source = "evil" if suffix == ".safetensors" else str(path)
    with pytest.raises(UnsafeFileError, match="pickle"):
        safefile.load_lora_file(path)
    with pytest.raises(UnsafeFileError, match="pickle"):
        inspect_source(source, settings=settings)
    with pytest.raises(LoraFileError, match="pickle"):
        library.add_to_library(settings.lora_dir / "other", path)
    if suffix == ".safetensors":
        entry = listing(settings)["evil"]
        assert entry["format"] == "invalid" and "pickle" in entry["problem"]
    else:
        with pytest.raises(UnsafeFileError, match="pickle"):
            resolve_source(source, settings=settings)
    assert not flag.exists()


def _two_tensors(first_offsets, second_offsets, dtype="F32"):
    return {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": {"dtype": dtype, "shape": [2, 4], "data_offsets": first_offsets},
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": {"dtype": dtype, "shape": [4, 2], "data_offsets": second_offsets},
    }


@pytest.mark.parametrize(
    "name, build, match",
    [
        ("header_past_end", lambda p: p.write_bytes(struct.pack("<Q", 10_000) + b'{"a": 1}'), "truncated"),
        ("many_entries", lambda p: raw_safetensors(p, {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(100_000)}, bytes(400_000)), "more than 20000 tensors|MiB"),
        ("unknown_dtype", lambda p: raw_safetensors(p, _two_tensors([0, 32], [32, 64], dtype="F8_E4M3"), bytes(64)), "dtype F8_E4M3"),
        ("overlapping", lambda p: raw_safetensors(p, _two_tensors([0, 32], [16, 48]), bytes(64)), "overlap"),
        ("nan_tensors", lambda p: save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.full((2, 4), float("nan")), "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(4, 2)}, str(p)), "NaN or Inf"),
    ],
)
def test_a_malformed_file_is_refused_with_its_reason(settings, name, build, match):
    path = settings.lora_dir / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    build(path)
    with pytest.raises(UnsafeFileError, match=match):
        safefile.load_lora_file(path)
    entries = listing(settings)
    if name == "nan_tensors":  # a header-only listing cannot see NaN; loading refuses it
        assert entries[name]["problem"] is None
        with pytest.raises(UnsafeFileError, match=match):
            compare_files({"a": path, "b": path})
    else:
        every_reader_refuses(path, settings, match)


def test_keys_of_no_known_format_are_reported_not_guessed(settings):
    path = settings.lora_dir / "strange.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"foo.bar.weight": torch.ones(4, 4), "baz.qux": torch.ones(2)}, str(path))
    assert listing(settings)["strange"]["format"] == "unknown"
    report = inspect_source("strange", settings=settings)
    assert report.format == "unknown" and report.compatible is False and "unknown format" in report.reason
    with pytest.raises(LoraFileError, match="no module"):
        convert_source("strange", "kohya", settings=settings)


def test_an_exact_bake_never_writes_a_rank_the_reader_refuses(settings):
    from lora_space.service import LoraSpace

    write_lora(settings.lora_dir / "a.safetensors", 1, rank=20)  # 20 + 20 > the tiny modules' 32 inputs
    write_lora(settings.lora_dir / "b.safetensors", 2, rank=20)
    space = LoraSpace(settings, None)
    result = space.bake([{"source": "a", "strength": 0.5}, {"source": "b", "strength": 0.7}])
    baked = compare_files({"baked": result.file, "a": settings.lora_dir / "a.safetensors"})  # read back by the one reader
    assert baked.loras == ["baked", "a"]
    from lora_space.library.tools import read_lora_file

    lora, a, b = (read_lora_file(path) for path in (result.file, settings.lora_dir / "a.safetensors", settings.lora_dir / "b.safetensors"))
    for name, module in lora.modules.items():
        assert module.rank <= min(module.in_features, module.out_features)
        expected = 0.5 * a.modules[name].delta() + 0.7 * b.modules[name].delta()
        assert torch.allclose(module.delta(), expected, atol=1e-4 * float(expected.abs().max()))
