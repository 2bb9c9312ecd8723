"""Safe reading of LoRA `.safetensors` files: bounded headers, no pickle, no NaN/Inf.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the
tensor data. `parse_header` checks every bound before anything in the header is trusted;
local reads (`read_local_header`) and Hub range reads share it. `load_lora_file` is the
only function in LoRA Space that reads tensor data from a LoRA file.

Nothing here ever unpickles: a pickle (`.bin`, `.pt`, `.ckpt`, or one renamed
`.safetensors`) is recognised by its name or its first bytes and refused.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

import torch
from safetensors.torch import load_file

from lora_space.core.errors import LoraFileError, UnsafeFileError
from lora_space.lora.keymap import split_key

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 4 * 1024 * 1024  # a FLUX.1 LoRA on every linear layer needs ~0.15 MB
MAX_TENSORS = 20_000
MAX_NDIM = 4  # 2-D linear LoRAs, 4-D conv LoRAs (SD), 0-D alphas
MAX_DIM = 1 << 18
MAX_FILE_BYTES = 8 * 1024**3
MAX_RANK = 3072  # FLUX's hidden size: no FLUX linear layer has min(in, out) above it
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F32": (torch.float32, 4),
}
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})  # the one list (hub, sources, inspect)
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it; offsets are relative to the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked header: every tensor's dtype, shape and place, and the string metadata."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_bytes


def check_suffix(name: str) -> None:
    """Refuse a pickle by its name, before anything is read.

    Raises:
        UnsafeFileError: the name ends in a pickle suffix.
        LoraFileError: the name is not a `.safetensors` file.
    """
    suffix = Path(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"{Path(name).name} is a pickle file ({suffix}), which can run code when loaded; LoRA Space loads "
            "only .safetensors. Convert it with a tool you trust, or pick the repo's .safetensors file."
        )
    if suffix != ".safetensors":
        raise LoraFileError(f"{Path(name).name} is not a .safetensors file; LoRA Space loads only .safetensors files.")


def header_length(prefix: bytes, file_size: int, *, name: str) -> int:
    """Read N from the first bytes of a file (at least 9 of them), telling pickles apart.

    Raises:
        UnsafeFileError: a pickle or PyTorch zip renamed `.safetensors`, or N out of bounds.
    """
    if prefix.startswith(ZIP_MAGIC):
        raise UnsafeFileError(
            f"{name} is a PyTorch zip checkpoint (pickle) renamed .safetensors; it was not opened. "
            "Ask for a real .safetensors file or convert it with a tool you trust."
        )
    if len(prefix) < 9 or file_size < 10:
        raise UnsafeFileError(f"{name} is too short ({file_size} bytes) to be a safetensors file.")
    (length,) = struct.unpack("<Q", prefix[:8])
    plausible = 2 <= length <= MAX_HEADER_BYTES and 8 + length <= file_size
    if plausible and prefix[8:9] == b"{":
        return length
    if prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        raise UnsafeFileError(
            f"{name} is a pickle renamed .safetensors (it starts with a pickle opcode); it was not opened. "
            "Ask for a real .safetensors file or convert it with a tool you trust."
        )
    if length > MAX_HEADER_BYTES:
        raise UnsafeFileError(
            f"{name}: the header claims {length} bytes, more than the {MAX_HEADER_BYTES // 2**20} MiB a LoRA "
            "header may have; the file is corrupt or not a safetensors file."
        )
    if 8 + length > file_size:
        raise UnsafeFileError(f"{name}: the header claims {length} bytes but the file has only {file_size}; it is truncated.")
    raise UnsafeFileError(f"{name} is not a safetensors file (its header is not JSON); it was not opened.")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the name {key!r} appears twice")
        result[key] = value
    return result


def _tensor_info(name: str, entry: object, label: str) -> TensorInfo:
    """Check one header entry: dtype, shape, offsets, and that the offsets fit the shape."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise UnsafeFileError(f"{label}: tensor {name!r} has a malformed header entry.")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise UnsafeFileError(
            f"{label}: tensor {name!r} has dtype {dtype}; a LoRA may hold only F16, BF16 or F32 tensors."
        )
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(type(d) is int and 1 <= d <= MAX_DIM for d in shape):
        raise UnsafeFileError(
            f"{label}: tensor {name!r} has shape {shape!r}; a LoRA tensor has at most {MAX_NDIM} dimensions "
            f"of 1 to {MAX_DIM}."
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int and o >= 0 for o in offsets):
        raise UnsafeFileError(f"{label}: tensor {name!r} has malformed data offsets {offsets!r}.")
    begin, end = offsets
    needed = prod(shape) * DTYPES[dtype][1]
    if end - begin != needed:
        raise UnsafeFileError(
            f"{label}: tensor {name!r} of shape {shape} needs {needed} bytes but its offsets span {end - begin}."
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def parse_header(header: bytes, file_size: int, *, name: str = "the file") -> SafetensorsHeader:
    """Check a raw JSON header (the N bytes after the length) against the file's size.

    Args:
        header: the JSON bytes, as read locally or with an HTTP range request.
        file_size: the whole file's size, to check that every tensor lies inside it.
        name: how messages name the file.

    Raises:
        UnsafeFileError: any bound broken (size, count, dtype, shape, offsets, overlaps).
    """
    # 1. Size and a cheap tensor count before any parsing, then JSON with no duplicate names.
    if len(header) > MAX_HEADER_BYTES:
        raise UnsafeFileError(f"{name}: the header has {len(header)} bytes, more than the {MAX_HEADER_BYTES // 2**20} MiB limit.")
    if header.count(b'"data_offsets"') > MAX_TENSORS:
        raise UnsafeFileError(f"{name} lists more than {MAX_TENSORS} tensors, the most a LoRA may have.")
    try:
        parsed = json.loads(header, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as error:
        raise UnsafeFileError(f"{name}: the safetensors header is not valid JSON ({str(error)[:120]}).") from None
    if not isinstance(parsed, dict):
        raise UnsafeFileError(f"{name}: the safetensors header is not a JSON object.")
    # 2. String metadata only.
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UnsafeFileError(f"{name}: the header's __metadata__ must map names to strings.")
    # 3. Bounded tensor entries.
    if len(parsed) > MAX_TENSORS:
        raise UnsafeFileError(f"{name} lists more than {MAX_TENSORS} tensors, the most a LoRA may have.")
    tensors = {key: _tensor_info(key, entry, name) for key, entry in parsed.items()}
    # 4. Offsets inside the data section, not overlapping, with no holes.
    data_size = file_size - 8 - len(header)
    position, previous = 0, None
    for key, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.end > data_size:
            raise UnsafeFileError(
                f"{name}: tensor {key!r} lies at bytes {info.begin}..{info.end}, outside the file's "
                f"{data_size}-byte data section; the file is truncated or forged."
            )
        if info.begin < position:
            raise UnsafeFileError(f"{name}: tensors {previous!r} and {key!r} overlap in the file; it is forged or corrupt.")
        if info.begin > position:
            raise UnsafeFileError(f"{name}: bytes {position}..{info.begin} of the data belong to no tensor; the file is corrupt.")
        position, previous = info.end, key
    if position != data_size:
        raise UnsafeFileError(f"{name}: {data_size - position} bytes after the last tensor belong to no tensor; the file is corrupt.")
    # 5. LoRA ranks within the shapes and the bound, before anything allocates rank x rank.
    check_ranks(tensors, name=name)
    return SafetensorsHeader(tensors=tensors, metadata=dict(metadata), header_bytes=len(header), file_size=file_size)


def check_ranks(tensors: dict[str, TensorInfo], *, name: str = "the file") -> None:
    """Refuse LoRA ranks above `min(in, out)` of their module or above `MAX_RANK`.

    A down matrix A is (rank, in, ...), an up matrix B is (out, rank, ...); a rank above the
    module's own size adds nothing a full update could not hold, and costs rank x rank memory in
    every comparison (a 24 KB file of rank 6,000 would take 850 MB), so it is refused from the
    header alone. A module's A and B must agree on the rank.

    Raises:
        UnsafeFileError: names the tensor, its rank and the bound.
    """
    ranks: dict[str, tuple[str, int]] = {}
    for key, info in tensors.items():
        role = split_key(key)
        if role is None or role[1] not in ("A", "B") or len(info.shape) < 2:
            continue
        module, part = role
        rank = info.shape[0] if part == "A" else info.shape[1]
        size = prod(info.shape[1:]) if part == "A" else info.shape[0]
        if rank > min(size, MAX_RANK):
            raise UnsafeFileError(
                f"{name}: tensor {key!r} has rank {rank}, but a LoRA's rank may be at most {MAX_RANK} and at most "
                f"the module's {'input' if part == 'A' else 'output'} size ({size}); the file is forged or broken."
            )
        other = ranks.setdefault(module, (key, rank))
        if other[1] != rank:
            raise UnsafeFileError(
                f"{name}: tensors {other[0]!r} and {key!r} disagree on the rank ({other[1]} and {rank}); "
                "the file is broken."
            )


def read_local_header(path: str | Path) -> SafetensorsHeader:
    """Read and check the header of a local file without reading its tensors.

    Raises:
        UnsafeFileError, LoraFileError: see `check_suffix`, `header_length`, `parse_header`.
    """
    path = Path(path)
    check_suffix(path.name)
    if not path.is_file():
        raise LoraFileError(f"{path.name} does not exist or is not a file.")
    file_size = path.stat().st_size
    with path.open("rb") as handle:
        length = header_length(handle.read(9), file_size, name=path.name)
        handle.seek(8)
        header = handle.read(length)
    return parse_header(header, file_size, name=path.name)


def read_scalars(path: str | Path, header: SafetensorsHeader, names: list[str]) -> dict[str, float]:
    """Read a few one-element tensors (kohya `.alpha`) without loading the rest of the file."""
    values: dict[str, float] = {}
    with Path(path).open("rb") as handle:
        for name in names:
            info = header.tensors[name]
            if prod(info.shape) != 1:
                continue
            handle.seek(header.data_start + info.begin)
            raw = bytearray(handle.read(info.end - info.begin))
            value = torch.frombuffer(raw, dtype=info.torch_dtype).float().item()
            if math.isfinite(value):
                values[name] = value
    return values


def load_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a LoRA file's tensors and metadata after every safety check.

    The header is checked first (`read_local_header`), then the tensors are read and
    any tensor with NaN or Inf is refused.

    Returns:
        the tensors by name, and the header's string metadata.

    Raises:
        UnsafeFileError: a pickle, a header outside the bounds, or NaN/Inf values.
        LoraFileError: not a `.safetensors` file, missing, or too large.
    """
    path = Path(path)
    header = read_local_header(path)
    if header.file_size > MAX_FILE_BYTES:
        raise LoraFileError(f"{path.name} has {header.file_size} bytes, more than the {MAX_FILE_BYTES // 1024**3} GiB a LoRA may have.")
    tensors = load_file(str(path), device="cpu")
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise UnsafeFileError(
                f"{path.name}: tensor {name!r} holds NaN or Inf values, so the LoRA would ruin every image; "
                "the file is broken (often a training run that diverged)."
            )
    logger.debug("loaded %d tensors from %s", len(tensors), path)
    return tensors, header.metadata
