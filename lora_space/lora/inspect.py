"""Inspect a LoRA from its safetensors header alone: the `/inspect_lora` report.

The header (8-byte length + JSON) names every tensor with its dtype and shape, which is
enough to tell the layout, the ranks, the trained modules and how they land on the base
model; only kohya's one-number `.alpha` tensors are read from a local file's data. A Hub
file is read with HTTP range requests (`hub.read_safetensors_header`), never downloaded.

    inspect_source("alice/watercolor-lora", settings=settings).to_dict()
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import hub, sources
from ..errors import HubError, LoraFileError
from ..owners import LOCAL, Visitor
from ..settings import Settings
from .formats import SPLIT_METADATA, LoraSet, read_lora
from .keymap import block_of, detect_format, module_kind, split_key, target_of, unsupported_part
from .safefile import (
    MAX_HEADER_BYTES,
    PICKLE_SUFFIXES,
    SafetensorsHeader,
    check_suffix,
    parse_header,
    read_local_header,
    read_scalars,
)
from .shapes import BaseShapes, coverage, current_base, guess_base

logger = logging.getLogger(__name__)

DTYPE_NAMES = {"F16": "fp16", "BF16": "bf16", "F32": "fp32"}
TRAINING_FIELDS = {  # report name -> kohya `ss_*` metadata names, first found wins
    "steps": ("ss_max_train_steps", "ss_steps"),
    "epochs": ("ss_num_epochs", "ss_epoch"),
    "dataset_size": ("ss_num_train_images",),
    "resolution": ("ss_resolution",),
    "base_model": ("ss_sd_model_name", "ss_base_model_version", "modelspec.architecture"),
    "network_dim": ("ss_network_dim",),
    "network_alpha": ("ss_network_alpha",),
    "learning_rate": ("ss_learning_rate", "ss_unet_lr"),
    "optimizer": ("ss_optimizer",),
    "trained_at": ("ss_training_started_at", "modelspec.date"),
}


@dataclass
class InspectReport:
    """What a LoRA is and whether it fits the base model; API.md's `/inspect_lora` report.

    `rank`/`alpha` are what most modules have; `ranks`/`alphas` list the modules that differ.
    `coverage` is the share of the LoRA's modules landing on a base module of the same shape;
    `compatible` is false when none lands, and `reason` says why in plain words.
    """

    source: str
    format: str
    rank: int
    ranks: dict[str, int]
    alpha: float | None
    alphas: dict[str, float]
    num_tensors: int
    num_modules: int
    target_modules: list[str]
    trained_blocks: dict[str, list]
    text_encoder_parts: list[str]
    size_bytes: int
    dtype: str
    compatible: bool
    coverage: float
    reason: str
    base_model: str
    base_model_guess: str
    trigger_words: list[str] = field(default_factory=list)
    training_info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    rank_upper_bounds: list[str] = field(default_factory=list)  # modules whose rank the header only bounds

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (no `path` key: gradio_client would take the dict for a file)."""
        return asdict(self)


def _meta_view(header: SafetensorsHeader, alphas: dict[str, float]) -> dict[str, torch.Tensor]:
    """The file's tensors as meta tensors (shapes, no data); read alphas as real numbers."""
    view = {}
    for name, info in header.tensors.items():
        if name in alphas:
            view[name] = torch.tensor(alphas[name])
        else:
            view[name] = torch.empty(info.shape, dtype=info.torch_dtype, device="meta")
    return view


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text or "{}")
    except (ValueError, RecursionError):  # not JSON, or nested 100,000 deep
        return {}
    return value if isinstance(value, dict) else {}


def _split_hints(header: SafetensorsHeader) -> tuple[dict[str, str], list[str]]:
    """What the header tells about block-diagonal fused modules (kohya `img_attn.qkv`, `linear1`).

    A fused module of n parts written block-diagonally (sd-scripts' `split_qkv`, or our export)
    has n * r down rows for rank r per part; its shapes alone look like a dense module of rank
    n * r. The true part ranks are known from our `lora_space.split` record, from sd-scripts'
    `ss_network_args` naming `split_qkv`, or when `ss_network_dim` is the rows / n.

    Returns:
        the metadata with the inferred part ranks added to `lora_space.split` (so `read_lora`
        splits those modules exactly), and the diffusers modules that may still be split (their
        rows divide into the parts), whose rank is then only an upper bound.
    """
    metadata = header.metadata
    recorded = _json_object(metadata.get(SPLIT_METADATA, ""))
    split_flag = str(_json_object(metadata.get("ss_network_args", "")).get("split_qkv", "")).lower() == "true"
    dim = metadata.get("ss_network_dim", "")
    fmt = detect_format(list(header.tensors))
    inferred: dict[str, list[int]] = {}
    upper: list[str] = []
    for key, info in header.tensors.items():
        module, role = split_key(key) or ("", "")
        target = target_of(module, fmt) if role == "A" else None
        if target is None or not target.fused or target.bfl in recorded:
            continue
        parts, rows = len(target.names), info.shape[0]
        if rows % parts or rows <= parts:
            continue  # cannot be n equal parts: the rank is the true one
        if split_flag or (dim.isdigit() and int(dim) * parts == rows):
            inferred[target.bfl] = [rows // parts] * parts
        else:
            upper += target.names
    if inferred:
        metadata = {**metadata, SPLIT_METADATA: json.dumps({**recorded, **inferred})}
    return metadata, upper


def _training_info(metadata: dict[str, str], card: dict[str, Any]) -> dict[str, Any]:
    """Training facts from kohya `ss_*` metadata, then the model card's."""
    info: dict[str, Any] = {}
    for name, keys in TRAINING_FIELDS.items():
        value = next((metadata[key] for key in keys if metadata.get(key) not in (None, "", "None")), None)
        if value is not None:
            info[name] = int(value) if value.isdigit() else value
    for key in ("base_model", "license", "instance_prompt"):
        if card.get(key) and key not in info:
            info[key] = card[key]
    return info


def _blocks(lora: LoraSet) -> dict[str, list]:
    """Trained blocks by kind: double/single block numbers, text-encoder layers, other modules."""
    blocks: dict[str, set] = {"double": set(), "single": set(), "text_encoder": set(), "other": set()}
    for name in lora.modules:
        label = block_of(name)
        match = re.fullmatch(r"(double|single|text encoder) (\d+)", label)
        if match:
            blocks[match.group(1).replace(" ", "_")].add(int(match.group(2)))
        else:
            blocks["other"].add(module_kind(name))
    return {kind: sorted(values) for kind, values in blocks.items()}


def _dtype(header: SafetensorsHeader) -> str:
    counts = Counter(DTYPE_NAMES[info.dtype] for name, info in header.tensors.items() if len(info.shape) >= 2)
    return "+".join(name for name, _ in counts.most_common()) or "none"


def _reason(report_format: str, guess: str, hidden: int | None, base: BaseShapes, lora: LoraSet) -> str:
    """Why nothing lands, in words a user acts on."""
    if report_format == "unknown":
        return "Its keys are in an unknown format, so no loader knows where they go; it was not guessed."
    if "Stable Diffusion" in guess or guess == "SDXL":
        return f"It was trained for {guess}, not for a FLUX model; it cannot be used with {base.name}."
    if hidden and hidden != base.hidden_size:
        made_for = guess if guess.startswith(("FLUX", "tiny")) else "a FLUX.1-style model"
        return (
            f"It is a LoRA for {made_for} with hidden size {hidden}, but the base model {base.name} has "
            f"hidden size {base.hidden_size}; it only works with the base it was made for."
        )
    if not lora.modules:
        return "None of its keys name a FLUX module; it was probably made for another model."
    return f"None of its modules match a module of {base.name} in name and shape."


def inspect_header(
    header: SafetensorsHeader,
    *,
    source: str,
    base: BaseShapes,
    alphas: dict[str, float] | None = None,
    trigger_words: list[str] | None = None,
    card: dict[str, Any] | None = None,
) -> InspectReport:
    """Build the report from a checked header (`safefile.parse_header` or `read_local_header`).

    Args:
        header: the file's checked header.
        source: what the user asked for, echoed in the report.
        base: the shapes of the base model to measure coverage against.
        alphas: values of `.alpha` tensors already read (none for a Hub file).
        trigger_words: from the library or the model card.
        card: the model card's metadata, for training facts and the base model.
    """
    # 1. Read the layout from shapes alone.
    card = card or {}
    alphas = dict(alphas or {})
    warnings: list[str] = []
    alpha_keys = [name for name in header.tensors if name.endswith(".alpha")]
    missing_alphas = [name for name in alpha_keys if name not in alphas]
    network_alpha = header.metadata.get("ss_network_alpha", "")
    if missing_alphas and re.fullmatch(r"[0-9.eE+-]+", network_alpha or "x"):
        alphas.update(dict.fromkeys(missing_alphas, float(network_alpha)))
        warnings.append("Alpha was taken from the ss_network_alpha metadata; the per-module alpha tensors were not read.")
    elif missing_alphas:
        warnings.append("This file stores alpha per module in tensors, which a header-only read does not fetch; alpha is not known.")
    metadata, upper = _split_hints(header)
    lora = read_lora(_meta_view(header, alphas), metadata)
    modules = lora.modules
    # 2. Ranks and alphas: the common value (from the modules whose rank is known), and those that differ.
    ranks = {name: module.rank for name, module in modules.items()}
    if not ranks:  # a layout no table knows: ranks from the file's own down matrices
        ranks = {split_key(n)[0]: i.shape[0] for n, i in header.tensors.items() if (split_key(n) or ("", ""))[1] == "A"}
    others = [r for name, r in ranks.items() if name not in upper]
    rank = Counter(others or list(ranks.values())).most_common(1)[0][0] if ranks else 0
    upper = [name for name in upper if name in ranks and (not others or ranks[name] != rank)]  # a dense match stays
    if upper:
        parts = ranks[upper[0]] // rank if rank and ranks[upper[0]] % rank == 0 else 0
        hint = f" (probably rank {rank}: {parts} parts of rank {rank} side by side)" if parts > 1 else ""
        warnings.append(
            f"{len(upper)} modules come from fused q/k/v (and MLP) modules that a header alone cannot tell apart from a "
            f"block-diagonal (split) layout; their ranks, e.g. {ranks[upper[0]]} for {upper[0]}, are upper bounds{hint}."
        )
    known_alpha = not missing_alphas or bool(alphas)
    effective = {name: float(module.rank if module.alpha is None else module.alpha) for name, module in modules.items()}
    alpha = Counter(effective.values()).most_common(1)[0][0] if effective and known_alpha else None
    # 3. Coverage on the current base, and the base it was made for.
    cover = coverage(lora, base)
    guess, hidden = guess_base(lora, {name: info.shape for name, info in header.tensors.items()}, card_base=str(card.get("base_model", "")))
    compatible = cover.matched > 0
    reason = "" if compatible else _reason(lora.format, guess, hidden, base, lora)
    if compatible and cover.share < 1:
        odd = (cover.wrong_shape + cover.missing)[:3]
        warnings.append(
            f"{cover.total - cover.matched} of {cover.total} modules do not land on {base.name} "
            f"(e.g. {', '.join(odd)}); they will be ignored."
        )
    if base.note:
        warnings.append(base.note)
    # 4. What else the header says.
    text_parts = ["CLIP text encoder"] if any(name.startswith("text_encoder.") for name in modules) else []
    text_parts += sorted({f"{unsupported_part(name)} (not loadable)" for name in lora.unplaced if unsupported_part(name)})
    return InspectReport(
        source=source,
        format=lora.format,
        rank=rank,
        ranks={name: r for name, r in ranks.items() if r != rank},
        alpha=alpha,
        alphas={name: a for name, a in effective.items() if a != alpha} if alpha is not None else {},
        num_tensors=len(header.tensors),
        num_modules=cover.total,
        target_modules=sorted({module_kind(name) for name in modules}),
        trained_blocks=_blocks(lora),
        text_encoder_parts=text_parts,
        size_bytes=header.file_size,
        dtype=_dtype(header),
        compatible=compatible,
        coverage=round(cover.share, 4),
        reason=reason,
        base_model=base.name,
        base_model_guess=guess,
        trigger_words=list(trigger_words or []) or [w for w in [header.metadata.get("modelspec.trigger_phrase", "")] if w],
        training_info=_training_info(header.metadata, card),
        warnings=lora.warnings + warnings,
        rank_upper_bounds=upper,
    )


def inspect_file(path: str | Path, *, base: BaseShapes, source: str | None = None, trigger_words: list[str] | None = None) -> InspectReport:
    """Inspect a local `.safetensors` file (its header and its few `.alpha` numbers)."""
    header = read_local_header(path)
    alphas = read_scalars(path, header, [name for name in header.tensors if name.endswith(".alpha")])
    return inspect_header(header, source=source or str(path), base=base, alphas=alphas, trigger_words=trigger_words)


def inspect_source(
    source: str, *, settings: Settings, token: str | None = None, visitor: Visitor = LOCAL
) -> InspectReport:
    """The `/inspect_lora` report for a library name, a local path, `user/repo` or `user/repo/file`.

    A Hub file is read with range requests (its header only); nothing is downloaded.
    Call `.to_dict()` for the JSON the endpoint returns.

    Raises:
        LoraFileError: nothing by that name, or not a `.safetensors` file.
        UnsafeFileError: a pickle, or a header outside the safety bounds.
        HubError: the Hub cannot give the header (not found, gated, offline).
    """
    # 1. Refuse pickles by name before anything is read.
    source = source.strip()
    if not source:
        raise LoraFileError("Type a LoRA to inspect: a library name, 'user/repo' or 'user/repo/file.safetensors'.")
    if Path(source).suffix.lower() in PICKLE_SUFFIXES:
        check_suffix(source)
    base = current_base(settings, token=token)
    # 2. The library or a local file: the same rules as loading (`sources.resolve_source`).
    #    A path outside the visitor's folders, or missing, gets one answer (`sources.not_found`).
    resolved = sources.resolve_local(source, settings=settings, visitor=visitor)
    if resolved is not None:
        return inspect_file(resolved.file, base=base, source=source, trigger_words=list(resolved.trigger_words))
    # 3. The Hub: the header by range requests, the card for trigger words and training facts,
    #    with the caller's token only (never the Space's own).
    token = token or False
    repo_id, filename = sources.hub_file(source, settings=settings, token=token)
    raw, size = hub.read_safetensors_header(
        repo_id, filename, endpoint=settings.hf_endpoint, token=token, offline=settings.hf_offline,
        max_header_bytes=MAX_HEADER_BYTES,
    )
    header = parse_header(raw, size, name=f"{repo_id}/{filename}")
    try:
        card = hub.model_card_data(repo_id, endpoint=settings.hf_endpoint, token=token, offline=settings.hf_offline)
    except HubError as error:
        logger.info("no model card for %s: %s", repo_id, error)
        card = {}
    report = inspect_header(header, source=source, base=base, trigger_words=hub.trigger_words_from_card(card), card=card)
    logger.info("inspected %s/%s: %s, coverage %.2f", repo_id, filename, report.format, report.coverage)
    return report
