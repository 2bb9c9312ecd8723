"""Safety: only `.safetensors` is read, pickles are never unpickled, headers are bounded."""

from __future__ import annotations

import json
import pickle
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_space.core.errors import LoraFileError, UnsafeFileError
from lora_space.lora.safefile import (
    MAX_TENSORS,
    load_lora_file,
    parse_header,
    read_local_header,
)

SENTINEL_NAME = "unpickled.flag"


class _Trap:
    """Unpickling this creates a file: the test fails if anything ever unpickles it."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


def _raw_file(path: Path, header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> Path:
    """A safetensors-shaped file with any header (even a broken one)."""
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)
    return path


def _entry(begin: int, end: int, dtype: str = "F32", shape: list[int] | None = None) -> dict:
    return {"dtype": dtype, "shape": shape or [(end - begin) // 4], "data_offsets": [begin, end]}


def _good(path: Path) -> Path:
    save_file({"a.lora_A.weight": torch.ones(2, 4), "a.lora_B.weight": torch.ones(4, 2)}, str(path), metadata={"k": "v"})
    return path


def _bad_files(folder: Path) -> dict[str, tuple[Path, type[Exception], str]]:
    """Each bad file, the error it must raise, and a phrase of its own message."""
    flag = folder / SENTINEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    bin_file = folder / "weights.bin"
    torch.save({"trap": _Trap(flag)}, bin_file)
    zip_renamed = folder / "zip.safetensors"
    torch.save({"trap": _Trap(flag)}, zip_renamed)
    pickle_renamed = folder / "pickle.safetensors"
    pickle_renamed.write_bytes(pickle.dumps(_Trap(flag), protocol=4))
    nan = folder / "nan.safetensors"
    save_file({"a.lora_A.weight": torch.tensor([[1.0, float("nan")]]), "a.lora_B.weight": torch.ones(2, 1)}, str(nan))
    inf = folder / "inf.safetensors"
    save_file({"a.lora_A.weight": torch.tensor([[1.0, float("inf")]]), "a.lora_B.weight": torch.ones(2, 1)}, str(inf))
    many = {f"t{i}.lora_A.weight": _entry(0, 0, shape=[1]) for i in range(MAX_TENSORS + 1)}
    return {
        "pickle .bin": (bin_file, UnsafeFileError, "is a pickle file (.bin)"),
        "torch zip renamed": (zip_renamed, UnsafeFileError, "PyTorch zip checkpoint"),
        "pickle renamed": (pickle_renamed, UnsafeFileError, "pickle renamed .safetensors"),
        "huge header length": (_raw_file(folder / "huge.safetensors", b"{}", length=2**40), UnsafeFileError, "the header claims"),
        "truncated header": (_raw_file(folder / "short.safetensors", b'{"a": 1}', length=4096), UnsafeFileError, "truncated"),
        "not json": (_raw_file(folder / "json.safetensors", b"{not json at all}"), UnsafeFileError, "not valid JSON"),
        "too many tensors": (_raw_file(folder / "many.safetensors", many), UnsafeFileError, f"more than {MAX_TENSORS} tensors"),
        "bad dtype": (_raw_file(folder / "i64.safetensors", {"x": _entry(0, 8, "I64", [1])}, bytes(8)), UnsafeFileError, "dtype I64"),
        "bad shape": (_raw_file(folder / "shape.safetensors", {"x": _entry(0, 4, shape=[1, 1, 1, 1, 1])}, bytes(4)), UnsafeFileError, "at most 4 dimensions"),
        "size mismatch": (_raw_file(folder / "size.safetensors", {"x": _entry(0, 8, shape=[3])}, bytes(8)), UnsafeFileError, "needs 12 bytes"),
        "offsets outside": (_raw_file(folder / "outside.safetensors", {"x": _entry(0, 64)}, bytes(16)), UnsafeFileError, "outside the file"),
        "overlapping": (_raw_file(folder / "overlap.safetensors", {"x": _entry(0, 8), "y": _entry(4, 12)}, bytes(12)), UnsafeFileError, "overlap"),
        "gap": (_raw_file(folder / "gap.safetensors", {"x": _entry(0, 4), "y": _entry(8, 12)}, bytes(12)), UnsafeFileError, "belong to no tensor"),
        "duplicate name": (_raw_file(folder / "dup.safetensors", b'{"x": 1, "x": 2}'), UnsafeFileError, "appears twice"),
        "metadata not strings": (_raw_file(folder / "meta.safetensors", {"__metadata__": {"a": 1}}), UnsafeFileError, "__metadata__"),
        "nan": (nan, UnsafeFileError, "NaN or Inf"),
        "inf": (inf, UnsafeFileError, "NaN or Inf"),
        "not safetensors suffix": (folder / "notes.txt", LoraFileError, "not a .safetensors file"),
    }


def test_every_bad_file_is_refused_fast_with_its_own_message(tmp_path: Path) -> None:
    cases = _bad_files(tmp_path / "bad")
    messages = set()
    for label, (path, error, phrase) in cases.items():
        started = time.perf_counter()
        with pytest.raises(error) as caught:
            load_lora_file(path)
        elapsed = time.perf_counter() - started
        assert phrase in str(caught.value), (label, str(caught.value))
        assert elapsed < 0.5, (label, elapsed)
        messages.add(str(caught.value).replace(path.name, "FILE"))
    assert len(messages) >= len(cases) - 1  # NaN and Inf share one message
    assert not (tmp_path / "bad" / SENTINEL_NAME).exists(), "a pickle was unpickled"


def test_good_file_loads_with_metadata(tmp_path: Path) -> None:
    tensors, metadata = load_lora_file(_good(tmp_path / "good.safetensors"))
    assert set(tensors) == {"a.lora_A.weight", "a.lora_B.weight"}
    assert metadata == {"k": "v"}


def test_header_is_read_without_the_data(tmp_path: Path) -> None:
    path = _good(tmp_path / "good.safetensors")
    header = read_local_header(path)
    assert header.tensors["a.lora_A.weight"].shape == (2, 4)
    assert header.file_size == path.stat().st_size


def test_parse_header_from_bytes_checks_against_the_remote_size() -> None:
    header = json.dumps({"x": _entry(0, 16)}).encode()
    assert parse_header(header, 8 + len(header) + 16).tensors["x"].shape == (4,)
    with pytest.raises(UnsafeFileError, match="outside the file"):
        parse_header(header, 8 + len(header) + 8, name="user/repo/x.safetensors")
