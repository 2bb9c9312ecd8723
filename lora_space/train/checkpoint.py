"""A training job's files: the full training state, kept LoRAs, the latent cache, progress.

A job folder holds (see `JobFiles`):

    config.json        the TrainConfig
    rows.json          the dataset rows (image path relative to the folder, caption, split, size, bucket)
    cache/             latents (mean, std) of each image and the embeddings of each caption, a file each
    state/step_N/      the full training state after step N: lora, optimizer and RNG tensors
                       (safetensors) and state.json (step, scheduler, data order); only the newest is kept
    checkpoints/       LoRA files kept every `checkpoint_every` steps (diffusers layout)
    samples/           sample PNGs; progress.json: losses, validation losses, samples, warnings
    final.safetensors  the finished LoRA

Every file is written atomically (a temp file, then `os.replace`), and a state folder is
renamed into place only when complete, so a job killed at any moment finds its last
complete state. Tensors are stored as safetensors and read back through `safefile`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import write_atomically
from ..lora.export import save_tensors
from ..lora.safefile import load_lora_file


_EXACT_IN_FLOAT = (torch.uint8, torch.int8, torch.int16, torch.bool)


@dataclass(frozen=True)
class JobFiles:
    """The paths of one job folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def rows(self) -> Path:
        return self.root / "rows.json"

    @property
    def cache(self) -> Path:
        """A folder: one file per encoded image and caption (`cache.CacheBuilder`)."""
        return self.root / "cache"

    @property
    def states(self) -> Path:
        return self.root / "state"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def final(self) -> Path:
        return self.root / "final.safetensors"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def stop_flag(self) -> Path:
        """Present while a stop (cancel or shutdown) is asked for; a forked GPU worker sees it too."""
        return self.root / "stop"


SAMPLE_PROMPTS = "prompts.json"
"""In a job's samples folder: the sample prompts by number (`..._prompt<number>_...png`)."""


def write_json(path: Path, value) -> None:
    text = json.dumps(value, indent=1, sort_keys=True)
    write_atomically(path, lambda file: file.write(text.encode("utf-8")))


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def log_line(files: JobFiles, text: str) -> None:
    with files.log.open("a", encoding="utf-8") as handle:
        handle.write(text.rstrip("\n") + "\n")


# -- the full training state --------------------------------------------------------------


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's `state_dict()` as flat tensors plus JSON (non-tensor values)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    for index, values in info["plain"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": info["param_groups"]}


def save_state(
    files: JobFiles,
    step: int,
    lora: dict[str, torch.Tensor],
    optimizer: dict,
    scheduler: dict,
    rng: dict[str, torch.Tensor],
    extra: dict,
) -> Path:
    """Write the full state after `step` as `state/step_N`, then drop older states."""
    files.states.mkdir(parents=True, exist_ok=True)
    target = files.states / f"step_{step:06d}"
    partial = files.states / f".partial_{step:06d}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        _write_state(partial, step, lora, optimizer, scheduler, rng, extra)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a full disk leaves the last complete state only
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    for older in files.states.glob("step_*"):
        if older != target:
            shutil.rmtree(older, ignore_errors=True)
    return target


def _write_state(partial: Path, step: int, lora: dict, optimizer: dict, scheduler: dict, rng: dict, extra: dict) -> None:
    optimizer_tensors, optimizer_info = _flatten_optimizer(optimizer)
    tensors = {f"lora.{name}": value.detach().cpu().contiguous() for name, value in lora.items()}
    tensors |= optimizer_tensors | {f"rng.{name}": value for name, value in rng.items()}
    # The safe reader takes only float tensors: byte tensors (RNG states, 8-bit optimizer
    # states) go as float32, which holds every byte value exactly, and come back as bytes.
    converted = {name: str(value.dtype).removeprefix("torch.") for name, value in tensors.items() if value.dtype in _EXACT_IN_FLOAT}
    tensors = {name: value.float() if name in converted else value for name, value in tensors.items()}
    save_tensors(partial / "state.safetensors", tensors, {"format": "pt"})
    info = {"step": step, "optimizer": optimizer_info, "scheduler": scheduler, "converted": converted} | extra
    write_json(partial / "state.json", info)
    for handle in (partial / "state.safetensors", partial / "state.json"):
        with handle.open("rb") as opened:
            os.fsync(opened.fileno())


def _newest_state(files: JobFiles) -> Path | None:
    found = sorted(path for path in files.states.glob("step_*") if (path / "state.json").exists()) if files.states.exists() else []
    return found[-1] if found else None


def saved_state_info(files: JobFiles) -> dict | None:
    """The newest complete state's `state.json` alone (step, scheduler, extras), without its tensors; None if none."""
    folder = _newest_state(files)
    return read_json(folder / "state.json") if folder else None


def load_state(files: JobFiles) -> dict | None:
    """The newest complete state: `step`, `lora`, `optimizer`, `scheduler`, `rng` and the extras; None if none."""
    folder = _newest_state(files)
    if folder is None:
        return None
    info = read_json(folder / "state.json")
    tensors, _ = load_lora_file(folder / "state.safetensors")
    for name, dtype in info.pop("converted", {}).items():
        tensors[name] = tensors[name].to(getattr(torch, dtype))
    info["lora"] = {name[len("lora."):]: value for name, value in tensors.items() if name.startswith("lora.")}
    info["rng"] = {name[len("rng."):]: value for name, value in tensors.items() if name.startswith("rng.")}
    info["optimizer"] = _unflatten_optimizer(tensors, info["optimizer"])
    return info
