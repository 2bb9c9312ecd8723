"""The one pipeline of the process, shared by every user.

`Engine.generate` is the only way to run the pipeline. Each request names its LoRAs and
strengths; under one lock the engine loads what is missing (each file read once, kept in
an LRU cache of adapters), sets the mix, fuses it when the same mix repeats, runs the
pipeline and returns images. Adapters that fall out of the cache are deleted from the
model, so `set_adapters` costs what the active LoRAs cost, not what was ever used.

Generations and training chunks take turns on the pipeline, first come, first served
(`Turns`): a chunk that sees a generation waiting ends at its next step boundary, and the
generation runs before the chunk's job gets the pipeline again.

On ZeroGPU the GPU function runs in a forked worker whose module changes never reach the
main process, so all adapter work happens inside it (`_run_locked`); the turns are taken in
the main process, around the GPU call.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from diffusers import FluxPipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from .compiled import CompileOptions, CompiledTransformer
from .errors import LimitError, LoraFileError
from .gpu import gpu, on_zerogpu
from .turns import Turns
from .lora.formats import to_diffusers
from .lora.safefile import load_lora_file
from .lora.shapes import no_module_matched
from .settings import Limits

logger = logging.getLogger(__name__)

LORA_COMPONENTS = ("transformer", "text_encoder")
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a request, already resolved to a local `.safetensors` file.

    `key` names the file's content (path + size + mtime, or repo + revision + file):
    two specs with the same key share one adapter.
    """

    key: str
    file: str
    name: str
    strength: float


@dataclass(frozen=True)
class Options:
    """How to generate, whatever the prompt and the LoRAs."""

    negative_prompt: str = ""
    seed: int = -1
    steps: int = 28
    guidance: float = 3.5
    true_cfg: float = 1.0
    width: int = 1024
    height: int = 1024
    num_images: int = 1


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    options: Options = Options()
    loras: tuple[LoraSpec, ...] = ()

    def check(self, limits: Limits) -> None:
        """Refuse a request outside the limits before any GPU time is asked for."""
        options = self.options
        if not 1 <= options.steps <= limits.max_steps:
            raise LimitError(f"steps={options.steps} is out of range; use 1 to {limits.max_steps}.")
        for label, value in (("width", options.width), ("height", options.height)):
            if not limits.min_size <= value <= limits.max_size or value % limits.size_multiple:
                raise LimitError(
                    f"{label}={value} is not allowed; use a multiple of {limits.size_multiple} "
                    f"from {limits.min_size} to {limits.max_size}."
                )
        if not 1 <= options.num_images <= limits.max_images:
            raise LimitError(f"num_images={options.num_images} is out of range; use 1 to {limits.max_images}.")
        if len(self.loras) > limits.max_loras:
            raise LimitError(f"{len(self.loras)} LoRAs asked for; use at most {limits.max_loras} at once.")
        if len(self.prompt) > limits.max_prompt_chars:
            raise LimitError(
                f"The prompt has {len(self.prompt)} characters; shorten it to {limits.max_prompt_chars} or fewer."
            )
        if not -1 <= options.seed <= MAX_SEED:
            raise LimitError(f"seed={options.seed} is out of range; use -1 (random) or 0 to {MAX_SEED}.")
        if len(options.negative_prompt) > limits.max_prompt_chars:
            raise LimitError(
                f"The negative prompt has {len(options.negative_prompt)} characters; shorten it to "
                f"{limits.max_prompt_chars} or fewer."
            )
        check_work(limits.work(options), limits, what="This request")


def check_work(work: float, limits: Limits, *, what: str) -> None:
    """Refuse a call whose GPU work (steps x images x megapixels x CFG passes) passes `limits.max_work`."""
    if work > limits.max_work:
        raise LimitError(
            f"{what} asks for {work:.0f} units of work (steps x images x megapixels, doubled by true CFG), "
            f"more than the {limits.max_work:.0f} one call may use; lower the steps, the size or the number of images."
        )


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seed: int
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    fused: bool = False
    compiled: bool = False  # the transformer ran compiled (`Engine(compile=...)`); False: eager


@dataclass
class Adapter:
    """A LoRA attached to the pipeline under `adapter_name`."""

    adapter_name: str
    coverage: float
    matched: int
    total: int


class Engine:
    """Owns the pipeline and its adapter state; every change happens under `self._lock`.

    Generations and training chunks take turns (`turn`, first come, first served); a chunk ends
    at its next step boundary when `generation_waiting()`. Between the chunks of one job its
    adapter may stay attached, switched off (`parked`), so that the next chunk resumes at once.

    Args:
        pipe: the base pipeline (already on its device).
        cache_size: how many adapters stay attached (LRU).
        fuse_after: fuse a mix once it has been asked for this many times in a row.
        fuse_memory_bytes: CPU memory for the original weights of fused layers (see `_fuse`).
        compile: run the transformer compiled, LoRAs hot-swapped into fixed slots (`lora_space.compiled`);
            None: eager, with adapters attached and fused as above.
    """

    def __init__(
        self,
        pipe: FluxPipeline,
        *,
        cache_size: int = 8,
        fuse_after: int = 2,
        fuse_memory_bytes: int = 8 * 1024**3,
        compile: CompileOptions | None = None,
    ) -> None:
        self.pipe = pipe
        self.cache_size = cache_size
        self.fuse_after = fuse_after
        self.fuse_memory_bytes = fuse_memory_bytes
        self._lock = threading.Lock()
        self._adapters: OrderedDict[str, Adapter] = OrderedDict()
        self._names = itertools.count()
        self._fused_mix: tuple[tuple[str, float], ...] | None = None
        self._fused_layers: list[BaseTunerLayer] = []
        self._originals: dict[BaseTunerLayer, torch.Tensor] = {}  # base weights before any fusing, on CPU
        self._original_bytes = 0
        self._last_mix: tuple[tuple[str, float], ...] | None = None
        self._repeats = 0
        self._layers: list[BaseTunerLayer] | None = None  # the LoRA layers, found again after each load or delete
        self.file_reads = 0  # LoRA files read from disk since start (benchmarks and tests read it)
        # Compiled mode: adapters stay out of the model; `_attach` caches state dicts for the slots.
        self._compiled = CompiledTransformer(pipe, compile) if compile is not None else None
        self._eager_reason: str | None = None  # why the current mix runs eager in compiled mode
        self._eager_names: list[str] = []  # its adapters, attached for that request only
        self._turns = Turns()
        # What a training chunk left on the pipeline for the next chunk of its job (a training
        # session whose adapter stays attached, switched off); only borrowers (`lend`) use it.
        self.parked: object | None = None
        _ENGINES[id(self)] = self

    # -- public -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.pipe.transformer.device

    def loaded_adapters(self) -> list[str]:
        """The adapter names attached to the transformer, as diffusers reports them."""
        return list(self.pipe.get_list_adapters().get("transformer", []))

    def generate(self, request: GenerationRequest, *, progress=None) -> GenerationResult:
        """Run one request with its own LoRA mix, in its turn (a training chunk ends at its next step for it)."""
        seed = request.options.seed if request.options.seed >= 0 else secrets.randbelow(MAX_SEED)
        with self._turns.turn(generation=True):
            if on_zerogpu():  # arguments are pickled into the GPU worker: pass the engine by id
                return _generate_on_gpu(id(self), request, seed, None)
            return _generate_on_gpu(id(self), request, seed, progress)

    def turn(self) -> contextlib.AbstractContextManager[None]:
        """A training chunk's turn on the pipeline: hold it around the chunk's GPU call (then `lend`).

        Turns are first come, first served; a generation that arrives meanwhile waits at most
        until the chunk's next step boundary (`generation_waiting`).
        """
        return self._turns.turn()

    @property
    def parks_training(self) -> bool:
        """Whether a training chunk may leave its session parked on the pipeline (`parked`) for its job's
        next chunk: not in compiled mode, whose compiled blocks must see the modules they were compiled with."""
        return self._compiled is None

    def generation_waiting(self) -> bool:
        """A generation waits for its turn: a training chunk ends at its next step boundary.

        Read from shared memory, so it also answers inside a forked GPU worker (ZeroGPU).
        """
        return self._turns.waiting_generations() > 0

    @contextlib.contextmanager
    def lend(self) -> Iterator[FluxPipeline]:
        """Lend the pipeline to a training chunk, under the lock, and take it back unchanged.

        The borrower gets the base model: the fused mix undone (exactly: originals copied
        back) and every cached adapter switched off. It may attach its own adapter under a
        name of its own and train it (only that adapter's parameters); before returning it
        deletes the adapter, or leaves it attached for its job's next chunk in `parked`,
        switched off here like every other adapter, so that generations never see it. On
        return the engine puts back what it had: `requires_grad` of every parameter, the
        active mix and its strengths, and the fused weights if the mix was fused.

        The caller holds a `turn` around the chunk (in the main process; on ZeroGPU the chunk
        itself runs in a forked worker), and the chunk ends at its next step boundary when
        `generation_waiting()`, so a generation waits about one step.
        """
        with self._lock:
            fused_mix, mix = self._fused_mix, self._last_mix or ()
            self._unfuse()
            transformer = self.pipe.transformer
            grads = {parameter: parameter.requires_grad for parameter in transformer.parameters()}
            self._activate([], [])
            try:
                yield self.pipe
            finally:
                # Layers left without any adapter (the borrower's, or a parked one it deleted)
                # become plain layers again.
                for name, module in list(transformer.named_modules()):
                    if isinstance(module, BaseTunerLayer) and not getattr(module, "lora_A", None):
                        parent, _, child = name.rpartition(".")
                        setattr(transformer.get_submodule(parent) if parent else transformer, child, module.get_base_layer())
                self._layers = None
                for parameter, needed in grads.items():
                    parameter.requires_grad_(needed)
                self._activate([name for name, _ in mix], [weight for _, weight in mix])
                if fused_mix is not None and self._fuse([name for name, _ in fused_mix]):
                    self._fused_mix = fused_mix

    # -- adapter state (call only under the lock) ---------------------------------------

    def _attach(self, spec: LoraSpec) -> Adapter:
        """Return the adapter for `spec`, loading it once (`_evict` makes room afterwards)."""
        adapter = self._adapters.get(spec.key)
        if adapter is not None:
            self._adapters.move_to_end(spec.key)
            return adapter
        # 1. Read and check the file (only .safetensors, bounded header, no NaN/Inf).
        tensors, metadata = load_lora_file(spec.file)
        self.file_reads += 1
        state_dict, _ = to_diffusers(tensors, metadata)
        # 2. Keep the modules that land on a base module of the same shape. diffusers would
        #    silently skip unknown keys, and widen base weights for larger ones.
        state_dict, matched, total = self._matching(state_dict)
        if matched == 0:
            raise no_module_matched(spec.name, total)
        # 3. Attach under a fresh name and check that every kept module got it (compiled mode:
        #    keep the state dict for the slots instead).
        adapter_name = f"lora_{next(self._names)}"
        if self._compiled is not None:
            self._compiled.remember(adapter_name, spec.name, state_dict)
        else:
            self._load(spec.name, adapter_name, state_dict)
        adapter = Adapter(adapter_name, matched / total, matched, total)
        self._adapters[spec.key] = adapter
        return adapter

    def _load(self, label: str, adapter_name: str, state_dict: dict[str, torch.Tensor]) -> None:
        """Attach `state_dict` as adapter `adapter_name`; on any failure remove what was half attached."""
        self._unfuse()
        try:
            self.pipe.load_lora_weights(state_dict, adapter_name=adapter_name)
            self._layers = None
            self._check_attached(label, adapter_name, state_dict)
        except Exception:
            self._delete(adapter_name)
            raise

    def _evict(self, keep: set[str]) -> None:
        """Delete the least recently used adapters beyond `cache_size`, never one in `keep`."""
        for key in [key for key in self._adapters if key not in keep]:
            if len(self._adapters) <= self.cache_size:
                break
            self._delete(self._adapters.pop(key).adapter_name)

    def _module(self, module_path: str) -> torch.nn.Module | None:
        component, _, inner = module_path.partition(".")
        model = getattr(self.pipe, component, None) if component in LORA_COMPONENTS else None
        if model is None:
            return None
        if not hasattr(model, "text_model"):  # transformers 5's CLIPTextModel has no `text_model`
            inner = inner.removeprefix("text_model.")
        try:
            return model.get_submodule(inner)
        except AttributeError:
            return None

    def _matching(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, int]:
        """The part of `state_dict` whose modules exist with matching shapes; (kept, matched, total)."""
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in state_dict.items():
            module_path, _, part = key.rpartition(".lora_")
            modules.setdefault(module_path, {})[part] = tensor
        kept: dict[str, torch.Tensor] = {}
        for module_path, parts in modules.items():
            base = self._module(module_path)
            base = getattr(base, "base_layer", base)  # once an adapter is attached, peft wraps the Linear
            down, up = parts.get("A.weight"), parts.get("B.weight")
            if (
                isinstance(base, torch.nn.Linear)
                and down is not None
                and up is not None
                and down.shape[1] == base.in_features
                and up.shape[0] == base.out_features
                and up.shape[1] == down.shape[0]
            ):
                kept.update({f"{module_path}.lora_{part}": tensor for part, tensor in parts.items()})
        matched = len({key.rpartition(".lora_")[0] for key in kept})
        return kept, matched, len(modules)

    def _check_attached(self, label: str, adapter_name: str, state_dict: dict[str, torch.Tensor]) -> None:
        """diffusers loads nothing, silently, for keys it does not recognise: check what attached."""
        for module_path in {key.rpartition(".lora_")[0] for key in state_dict}:
            module = self._module(module_path)
            if adapter_name not in getattr(module, "lora_A", {}):
                raise LoraFileError(
                    f"LoRA {label!r} did not attach to {module_path}; its keys may be in a format "
                    "LoRA Space cannot convert yet (inspect it in LoRA tools)."
                )

    def _delete(self, adapter_name: str) -> None:
        if self._compiled is not None:
            self._compiled.forget(adapter_name)
        present = {name for names in self.pipe.get_list_adapters().values() for name in names}
        if adapter_name in present:
            self.pipe.delete_adapters(adapter_name)
        self._layers = None

    def _tuner_layers(self) -> list[BaseTunerLayer]:
        if self._layers is None:
            self._layers = [
                module
                for component in LORA_COMPONENTS
                for module in getattr(self.pipe, component).modules()
                if isinstance(module, BaseTunerLayer)
            ]
        return self._layers

    def _activate(self, names: list[str], weights: list[float]) -> None:
        """What `pipe.set_adapters(names, weights)` does for inference, at a cost set by the active LoRAs.

        diffusers' `set_adapters` and `enable_lora` walk every module and, in each LoRA layer,
        toggle `requires_grad` on every attached adapter, so their cost grows with the cache.
        Inference needs only, on each layer, the active names, their scales (strength * alpha /
        rank), and adapters switched on; no names switch them off (the base model). In compiled
        mode the blocks then run eager (the compiled ones expect the slots), until the next `_apply_mix`.
        """
        if self._compiled is not None:
            self._compiled.suspend()
        for layer in self._tuner_layers():
            layer._active_adapter = names  # peft's own fields behind `active_adapters`
            layer._disable_adapters = not names  # and `disable_adapters`
            for name, weight in zip(names, weights):
                layer.set_scale(name, weight)

    def _fuse(self, names: list[str]) -> bool:
        """Merge the active mix into the base weights, keeping each touched weight's original.

        Unfusing by subtraction is not exact: in bfloat16, `(W + d) - d` rounds, and over many
        mix changes the base model drifts (measured: 17% mean change of a layer after 200
        changes). So the first time a layer is fused its original goes to CPU memory, and
        unfusing copies it back bit for bit. Originals never go stale: only fusing changes
        base weights. A mix whose originals would pass `fuse_memory_bytes` runs unfused.
        """
        touched = [layer for layer in self._tuner_layers() if any(name in layer.lora_A for name in names)]
        needed = sum(layer.get_base_layer().weight.nbytes for layer in touched if layer not in self._originals)
        if self._original_bytes + needed > self.fuse_memory_bytes:
            return False
        for layer in touched:
            if layer not in self._originals:
                weight = layer.get_base_layer().weight.detach()
                original = weight.to("cpu", copy=True)
                self._originals[layer] = original.pin_memory() if weight.is_cuda else original  # pinned: faster copy back
        self._original_bytes += needed
        try:
            self.pipe.fuse_lora(components=list(LORA_COMPONENTS), lora_scale=1.0, adapter_names=names)
        except BaseException:
            # Out of memory (or anything else) part way: the layers merged so far get their
            # originals back, so no visitor after this one sees a half-fused mix.
            self._fused_layers = touched
            self._fused_mix = ()
            self._unfuse()
            raise
        self._fused_layers = touched
        return True

    def _unfuse(self) -> None:
        """Undo `_fuse`: the original weights copied back exactly, then diffusers' bookkeeping.

        The copy replaces peft's subtraction of each update (12x slower here), so the layers are
        marked unmerged first and `unfuse_lora` has only its records left to update.
        """
        if self._fused_mix is None:
            return
        with torch.no_grad():
            for layer in self._fused_layers:
                layer.get_base_layer().weight.copy_(self._originals[layer])
                layer.merged_adapters.clear()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already unmerged")
            self.pipe.unfuse_lora(components=list(LORA_COMPONENTS))
        self._fused_mix, self._fused_layers = None, []

    def _apply_mix(self, mix: tuple[tuple[str, float], ...]) -> bool:
        """Make `mix` (adapter name, strength) the active one; fuse it when it repeats. Returns fused."""
        self._repeats = self._repeats + 1 if mix == self._last_mix else 1
        self._last_mix = mix
        if self._compiled is not None:
            self._apply_compiled(mix)
            return False
        if mix == self._fused_mix:
            return True
        self._unfuse()
        names, weights = [name for name, _ in mix], [weight for _, weight in mix]
        self._activate(names, weights)
        if mix and self._repeats >= self.fuse_after and self._fuse(names):
            self._fused_mix = mix
            return True
        return False

    def _apply_compiled(self, mix: tuple[tuple[str, float], ...]) -> None:
        """Compiled mode: hot-swap `mix` into the slots, or attach it for one eager run and say why."""
        self._drop_eager()
        self._eager_reason = self._compiled.why_not(mix)
        if self._eager_reason is None:
            self._compiled.swap(mix)
            return
        try:
            for name, _ in mix:  # adapters for this request only: the compiled blocks never see them
                self._eager_names.append(f"{name}_eager")
                self._load(self._compiled.label(name), f"{name}_eager", self._compiled.state_dict(name))
        except BaseException:
            self._drop_eager()
            raise
        self._activate([f"{name}_eager" for name, _ in mix], [weight for _, weight in mix])

    def _drop_eager(self) -> None:
        """Delete the adapters of an eager run in compiled mode (the slots come back at the next swap)."""
        while self._eager_names:
            self._delete(self._eager_names.pop())

    def _run_locked(self, request: GenerationRequest, seed: int, progress) -> GenerationResult:
        timings: dict[str, float] = {}
        warnings: list[str] = []
        with self._lock:
            # 1. Attach every LoRA of the request (cached ones cost nothing).
            start = time.perf_counter()
            strengths: dict[str, float] = {}
            try:
                for spec in request.loras:
                    adapter = self._attach(spec)
                    if adapter.coverage < 1:
                        warnings.append(
                            f"LoRA {spec.name!r}: only {adapter.matched} of {adapter.total} modules "
                            f"({adapter.coverage:.0%}) match the base model; the rest is ignored."
                        )
                    strengths[adapter.adapter_name] = strengths.get(adapter.adapter_name, 0.0) + spec.strength
            finally:  # also when a LoRA fails to attach: the cache never grows past its size
                self._evict(keep={spec.key for spec in request.loras})
            timings["load_loras"] = time.perf_counter() - start
            # 2. Set the mix; LoRAs at strength 0 are left out, so all zero is the base model.
            start = time.perf_counter()
            mix = tuple(sorted((name, weight) for name, weight in strengths.items() if weight != 0))
            fused = self._apply_mix(mix)
            timings["set_adapters"] = time.perf_counter() - start
            # 3. Run the pipeline; one generator per image, seeded seed, seed+1, ...
            start = time.perf_counter()
            options = request.options
            generators = [
                torch.Generator(device="cpu").manual_seed(seed + index) for index in range(options.num_images)
            ]
            kwargs = {}
            if options.negative_prompt and options.true_cfg > 1:
                kwargs = {"negative_prompt": options.negative_prompt, "true_cfg_scale": options.true_cfg}
            callback = None
            if progress is not None:

                def callback(pipe, step, timestep, callback_kwargs):
                    progress((step + 1) / options.steps, desc=f"step {step + 1}/{options.steps}")
                    return callback_kwargs

            compiled = self._compiled is not None and self._compiled.active
            if self._compiled is not None and self._eager_reason:
                warnings.append(f"This image was made without compiled generation (slower): {self._eager_reason}.")
            try:
                images = self.pipe(
                    prompt=request.prompt,
                    num_inference_steps=options.steps,
                    guidance_scale=options.guidance,
                    width=options.width,
                    height=options.height,
                    num_images_per_prompt=options.num_images,
                    generator=generators,
                    callback_on_step_end=callback,
                    **kwargs,
                ).images
            finally:
                self._drop_eager()  # compiled mode: an eager mix's adapters never outlive its request
            timings["inference"] = time.perf_counter() - start
        return GenerationResult(images=images, seed=seed, warnings=warnings, timings=timings, fused=fused, compiled=compiled)


# Engines by id, written once per engine at start-up: the GPU function finds its engine here.
_ENGINES: dict[int, Engine] = {}


def engine_by_id(engine_id: int) -> Engine:
    """The engine of this process with `id(engine) == engine_id` (GPU functions get ids, not engines)."""
    return _ENGINES[engine_id]


def _gpu_seconds(engine_id: int, request: GenerationRequest, seed: int, progress) -> int:
    """ZeroGPU duration: about a second per step per megapixel image, plus LoRA loading."""
    options = request.options
    megapixels = options.width * options.height / 1_000_000
    return int(20 + 5 * len(request.loras) + options.steps * options.num_images * max(megapixels, 0.25) * 1.2)


@gpu(duration=_gpu_seconds)
def _generate_on_gpu(engine_id: int, request: GenerationRequest, seed: int, progress) -> GenerationResult:
    return _ENGINES[engine_id]._run_locked(request, seed, progress)
