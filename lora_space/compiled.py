"""Compiled generation that keeps per-request LoRA mixes (`LORA_SPACE_COMPILE`).

The transformer's repeated blocks run under `torch.compile` (regional compilation: each block
class is compiled once). A compiled graph is only reused while nothing it guards on changes,
and attaching an adapter, switching the active ones or setting a Python float scale all change
something. So in this mode LoRAs are never attached per request. The transformer holds a fixed
number of adapter *slots* (peft adapters `slot_0`, `slot_1`, ... on every Linear layer of the
transformer, each of rank `rank`), always active, each with one scale tensor shared by all its
layers. A request's LoRAs are hot-swapped into the slots in place (diffusers'
`load_lora_weights(..., hotswap=True)`, after `enable_lora_hotswap(target_rank=rank)`), each
padded with zeros to the slot rank, and their strengths are written into the scale tensors; an
unused slot has scale 0. A new mix therefore changes tensor values only: no recompilation.

A mix that cannot be hot-swapped (more LoRAs than slots, a rank above the slots', parts of the
text encoder, parts other than LoRA A/B weights) runs eager for that request: the engine
attaches it as ordinary adapters and the result says why (`CompiledTransformer.why_not`).

On ZeroGPU the default is off: each request may run in a fresh fork of the main process, whose
compiled code is gone, and `spaces`' ahead-of-time path (`aoti_compile` / `aoti_apply`) turns
every weight, LoRA slots included, into a constant of a package exported for one input shape,
which fits a Space with fixed LoRAs and one image size, not this one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
from diffusers import FluxPipeline
from peft.tuners.lora import LoraLayer

logger = logging.getLogger(__name__)

SLOT_PREFIX = "slot_"
LORA_PARTS = ("A.weight", "B.weight")


@dataclass(frozen=True)
class CompileOptions:
    """How the compiled path is built.

    Args:
        slots: LoRAs one request may have on the compiled path (more run eager).
        rank: the largest LoRA rank a slot holds (higher ranks run eager); every LoRA is padded to it.
        backend: `torch.compile`'s backend (`inductor`; tests may use `aot_eager`).
        mode: `torch.compile`'s mode (None: its default).
    """

    slots: int = 3
    rank: int = 64
    backend: str = "inductor"
    mode: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= 9:  # slot names must not contain each other (peft matches them as substrings)
            raise ValueError(f"CompileOptions.slots={self.slots}: use 1 to 9 slots.")
        if self.rank < 1:
            raise ValueError(f"CompileOptions.rank={self.rank}: use a rank of at least 1.")


@dataclass
class _Cached:
    """A LoRA's transformer state dict (diffusers keys, on the transformer's device) and what decides its fit."""

    label: str
    state_dict: dict[str, torch.Tensor]
    rank: int
    problem: str | None  # why it can never be hot-swapped, or None


class CompiledTransformer:
    """The pipeline's transformer with LoRA slots and compiled blocks; call only under the engine's lock.

    Args:
        pipe: the base pipeline, on its device, with no adapter attached yet.
        options: slots, rank and compile settings.

    Raises:
        ValueError: the pipeline already has adapters (slots must be the first ones).
    """

    def __init__(self, pipe: FluxPipeline, options: CompileOptions) -> None:
        transformer = pipe.transformer
        if getattr(transformer, "peft_config", {}):
            raise ValueError("Compiled generation must be set up before any LoRA is attached to the pipeline.")
        self.pipe = pipe
        self.options = options
        self.slot_names = [f"{SLOT_PREFIX}{index}" for index in range(options.slots)]
        self.targets = {name: module for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)}
        device, dtype = transformer.device, transformer.dtype
        # 1. The slots: hot-swapping enabled before the first adapter, then one all-zero LoRA of the
        #    slot rank per slot on every Linear layer, so that any LoRA of the transformer fits.
        pipe.enable_lora_hotswap(target_rank=options.rank)
        for slot in self.slot_names:
            zero = {}
            for name, module in self.targets.items():
                zero[f"transformer.{name}.lora_A.weight"] = torch.zeros(options.rank, module.in_features, device=device, dtype=dtype)
                zero[f"transformer.{name}.lora_B.weight"] = torch.zeros(module.out_features, options.rank, device=device, dtype=dtype)
            pipe.load_lora_weights(zero, adapter_name=slot)
        # 2. One scale tensor per slot, shared by its layers: a strength is one in-place write.
        self.layers = [module for module in transformer.modules() if isinstance(module, LoraLayer)]
        self.scales = [torch.zeros((), device=device) for _ in self.slot_names]
        for layer in self.layers:
            for slot, scale in zip(self.slot_names, self.scales):
                layer.scaling[slot] = scale
        self._held: list[str | None] = [None] * options.slots  # the cached LoRA each slot holds
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        # 3. Regional compilation: each repeated block class compiled once; `suspend` runs them eager.
        transformer.compile_repeated_blocks(fullgraph=True, backend=options.backend, mode=options.mode)
        self._compiled = {
            block: block._compiled_call_impl for block in transformer.modules() if block._compiled_call_impl is not None
        }
        self.active = False
        self.resume()

    # -- the cache of LoRAs (state dicts, not adapters) ----------------------------------

    def remember(self, name: str, label: str, state_dict: dict[str, torch.Tensor]) -> None:
        """Keep LoRA `name` (a diffusers state dict, kept modules only) for later swaps; `label` names it in messages."""
        device, dtype = self.pipe.transformer.device, self.pipe.transformer.dtype
        ranks = [tensor.shape[0] for key, tensor in state_dict.items() if key.endswith(".lora_A.weight")]
        problem = None
        parts = {key.rpartition(".lora_")[2] for key in state_dict}
        if any(key.startswith("text_encoder") for key in state_dict):
            problem = f"LoRA {label!r} also changes the text encoder, which compiled generation does not swap"
        elif parts - set(LORA_PARTS):
            problem = f"LoRA {label!r} has parts other than LoRA A/B weights ({', '.join(sorted(parts - set(LORA_PARTS)))})"
        elif any(key.removeprefix("transformer.").rpartition(".lora_")[0] not in self.targets for key in state_dict):
            problem = f"LoRA {label!r} changes layers the compiled slots do not hold"
        kept = state_dict if problem else {key: tensor.to(device, dtype) for key, tensor in state_dict.items()}
        self._cache[name] = _Cached(label, kept, max(ranks, default=0), problem)

    def forget(self, name: str) -> None:
        """Drop a LoRA from the cache; a slot holding it is free again (its scale is 0 from the next mix on)."""
        self._cache.pop(name, None)
        self._held = [None if held == name else held for held in self._held]

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The cached state dict of `name`, a new dict (diffusers' loader changes the one it gets)."""
        return dict(self._cache[name].state_dict)

    def label(self, name: str) -> str:
        """The name a person gave LoRA `name` (for messages)."""
        return self._cache[name].label

    # -- mixes -----------------------------------------------------------------------------

    def why_not(self, mix: tuple[tuple[str, float], ...]) -> str | None:
        """Why `mix` (cached name, strength) cannot run compiled, in words, or None when it can."""
        if len(mix) > self.options.slots:
            return (
                f"this mix has {len(mix)} LoRAs and compiled generation holds {self.options.slots} "
                "(LORA_SPACE_COMPILE_SLOTS)"
            )
        for name, _ in mix:
            cached = self._cache[name]
            if cached.problem:
                return cached.problem
            if cached.rank > self.options.rank:
                return (
                    f"LoRA {cached.label!r} has rank {cached.rank}, above the {self.options.rank} compiled slots hold "
                    "(LORA_SPACE_COMPILE_RANK)"
                )
        return None

    def swap(self, mix: tuple[tuple[str, float], ...]) -> None:
        """Make `mix` the compiled one: LoRAs not yet in a slot hot-swapped in, strengths written, the rest at 0.

        Raises:
            ValueError: `why_not(mix)` is not None.
        """
        reason = self.why_not(mix)
        if reason is not None:
            raise ValueError(f"This mix cannot be hot-swapped: {reason}.")
        self.resume()
        wanted = [name for name, _ in mix]
        slot_of = {name: index for index, name in enumerate(self._held) if name in wanted}
        free = [index for index, name in enumerate(self._held) if name not in wanted]
        for name in wanted:
            if name not in slot_of:
                slot_of[name] = index = free.pop(0)
                self._hotswap(index, name)
        with torch.no_grad():
            for scale in self.scales:
                scale.zero_()
            for name, strength in mix:
                self.scales[slot_of[name]].fill_(strength)
        for name in wanted:
            self._cache.move_to_end(name)

    def _hotswap(self, index: int, name: str) -> None:
        """Write LoRA `name`, padded to the slot rank, into slot `index` in place (peft zeroes the layers it lacks)."""
        rank = self.options.rank
        padded = {}
        for key, tensor in self._cache[name].state_dict.items():
            if key.endswith(".lora_A.weight"):  # (r, in) -> (rank, in)
                padded[key] = torch.cat([tensor, tensor.new_zeros(rank - tensor.shape[0], tensor.shape[1])])
            else:  # (out, r) -> (out, rank)
                padded[key] = torch.cat([tensor, tensor.new_zeros(tensor.shape[0], rank - tensor.shape[1])], dim=1)
        self._held[index] = None  # until the swap has finished: a failed swap leaves a slot at scale 0
        self.pipe.load_lora_weights(padded, adapter_name=self.slot_names[index], hotswap=True)
        self._held[index] = name

    # -- compiled or eager -------------------------------------------------------------

    def suspend(self) -> None:
        """Run the blocks eager: for a borrower (training) or an eager mix, whose adapters change the layers."""
        if self.active:
            for block in self._compiled:
                block._compiled_call_impl = None
            self.active = False

    def resume(self) -> None:
        """The compiled state again: only the slots active, no gradients, the compiled blocks back."""
        if self.active:
            return
        for layer in self.layers:
            layer._active_adapter = list(self.slot_names)  # peft's own fields, as `Engine._activate` sets them
            layer._disable_adapters = False
        for parameter in self.pipe.transformer.parameters():  # a borrower's adapter, deleted, set others trainable
            parameter.requires_grad_(False)
        for block, compiled in self._compiled.items():
            block._compiled_call_impl = compiled
        self.active = True
