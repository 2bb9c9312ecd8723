"""`TrainConfig`: the training settings, named as in the course's `config.json`.

The course prints (Part 3, "Advanced Configuration"):

    {"model_name": "flux-dev-v1", "resolution": 1024, "train_batch_size": 2, "learning_rate": 0.0005,
     "lr_scheduler": "cosine", "lr_warmup_steps": 100, "max_train_steps": 1000, "network_dim": 32,
     "network_alpha": 16, "optimizer_type": "AdamW8bit"}

`TrainConfig.from_dict` accepts exactly these values (and a few kohya/diffusers spellings of
the same keys), `merged` lays a call's values over the zip's `config.json`, and every value is
checked in `__post_init__` with a message that names the key and the fix. The presets and the
guidance shown beside each setting live in `presets.json`.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, field, fields

from lora_space.core.errors import TrainConfigError
from lora_space.core.settings import FLUX_DEV, TINY, Training

OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "AdamW8bit"}
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
QUANTIZATIONS = ("none", "nf4", "fp8")
# The course's name for FLUX.1-dev and the spellings people type for it.
FLUX_DEV_ALIASES = {"flux-dev-v1", "flux-dev", "flux.1-dev", "flux1-dev", "flux1dev", FLUX_DEV.lower()}
# Other tools' names for the same settings (kohya sd-scripts, diffusers' training scripts).
ALIASES = {
    "pretrained_model_name_or_path": "model_name",
    "rank": "network_dim",
    "lora_rank": "network_dim",
    "alpha": "network_alpha",
    "lora_alpha": "network_alpha",
    "optimizer": "optimizer_type",
    "batch_size": "train_batch_size",
    "max_steps": "max_train_steps",
    "save_every_n_steps": "checkpoint_every",
    "checkpointing_steps": "checkpoint_every",
    "sample_every_n_steps": "sample_every",
    "validation_prompt": "validation_prompts",
    "instance_prompt": "trigger_word",
}
MAX_PROMPTS = 8
MAX_PROMPT_CHARS = 1000
MAX_TRIGGER_CHARS = 100


@dataclass
class TrainConfig:
    """One training run's settings; names follow the course's `config.json`.

    Args:
        model_name: the base model; `"flux-dev-v1"` (the course) means FLUX.1-dev, `"tiny"` the test model.
        resolution: training size in pixels (the area of the aspect-ratio buckets), 64..2048, multiple of 16.
        train_batch_size: images per step, 1..64.
        learning_rate: greater than 0, at most 1 (the course: 0.0001-0.001).
        lr_scheduler: one of `SCHEDULERS` (diffusers' `get_scheduler` names).
        lr_warmup_steps: steps of linear warmup, 0..max_train_steps.
        max_train_steps: optimisation steps, 1..100,000.
        network_dim: LoRA rank, 1..512.
        network_alpha: LoRA alpha (> 0); the update is scaled by alpha / rank.
        optimizer_type: `AdamW` or `AdamW8bit` (bitsandbytes).
        trigger_word: the word that switches the LoRA on (put in front of captions that lack it).
        validation_split: share of images held out for the validation loss, 0..0.5.
        sample_every: steps between sample images (0: only at the end).
        checkpoint_every: steps between kept checkpoints (0: only the final LoRA).
        seed: fixes data order, noise and samples.
        gradient_checkpointing: recompute activations to save memory.
        cache_latents: encode images and captions once before the loop.
        mixed_precision: `no`, `bf16` or `fp16` (on a GPU).
        quantize_base: `none`, `nf4` or `fp8` for the frozen base.
        validation_prompts: prompts for the sample images (empty: a caption from the dataset).
        notes: what `from_dict` changed or fell back on, for the job report (not a setting).

    Raises:
        TrainConfigError: a value is out of range or unknown; the message names each key and its fix.
    """

    model_name: str = "flux-dev-v1"
    resolution: int = 1024
    train_batch_size: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 0
    max_train_steps: int = 1000
    network_dim: int = 16
    network_alpha: float = 8.0
    optimizer_type: str = "AdamW"
    trigger_word: str = ""
    validation_split: float = 0.2
    sample_every: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    mixed_precision: str = "bf16"
    quantize_base: str = "none"
    validation_prompts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        problems = _check_types(self) or _check_ranges(self)
        if problems:
            raise TrainConfigError("Training settings: " + " ".join(problems))
        self.optimizer_type = OPTIMIZERS[self.optimizer_type.lower()]  # AdamW8Bit -> AdamW8bit

    @property
    def lora_scale(self) -> float:
        """alpha / rank: the factor on the LoRA update."""
        return self.network_alpha / self.network_dim

    @property
    def validation_every(self) -> int:
        """Steps between validation losses: `checkpoint_every`, else `sample_every`, else a tenth of the run."""
        return self.checkpoint_every or self.sample_every or max(1, self.max_train_steps // 10)

    @property
    def sample_prompt_count(self) -> int:
        """Prompts of the sample images: `validation_prompts`, else one caption of the dataset."""
        return len(self.validation_prompts) or 1

    @classmethod
    def setting_names(cls) -> list[str]:
        return [item.name for item in fields(cls) if item.name != "notes"]

    @classmethod
    def from_dict(
        cls, values: dict, *, is_tiny: bool, bnb_available: bool | None = None, torchao_available: bool | None = None
    ) -> TrainConfig:
        """Read a `config.json` (the course's names and values as printed, or known aliases).

        Args:
            values: the settings; missing keys take the defaults.
            is_tiny: the Space runs the tiny model: FLUX.1-dev names mean `tiny`.
            bnb_available: whether 8-bit AdamW and the nf4 base can run (None: bitsandbytes installed and CUDA present).
            torchao_available: whether the fp8 base can run (None: torchao installed and CUDA present).

        Returns:
            The checked config; `notes` says what was mapped or fell back.

        Raises:
            TrainConfigError: unknown keys, wrong types or values out of range, each named.
        """
        if not isinstance(values, dict):
            raise TrainConfigError(f"The training config must be a JSON object such as {{\"max_train_steps\": 500}}, not {type(values).__name__}.")
        notes: list[str] = []
        canonical, problems = _canonical_keys(values)
        for name, raw in list(canonical.items()):
            try:
                canonical[name] = _coerce(name, raw)
            except ValueError as error:
                problems.append(str(error))
        if problems:
            raise TrainConfigError("Training settings: " + " ".join(problems))
        # 1. The model name: the course's "flux-dev-v1" is FLUX.1-dev, and tiny stands in for it.
        if "model_name" in canonical:
            canonical["model_name"] = _resolve_model(canonical["model_name"], is_tiny=is_tiny, notes=notes)
        else:
            canonical["model_name"] = TINY if is_tiny else FLUX_DEV
        # 2. 8-bit AdamW and the nf4 base need bitsandbytes on CUDA, the fp8 base torchao on CUDA;
        #    elsewhere fall back and say so (both packages are installed everywhere but macOS).
        optimizer = canonical.get("optimizer_type")
        wants_8bit = isinstance(optimizer, str) and OPTIMIZERS.get(optimizer.lower()) == "AdamW8bit"
        quantize = canonical.get("quantize_base", "none")
        if (wants_8bit or quantize == "nf4") and bnb_available is None:
            bnb_available = _runs_on_cuda("bitsandbytes")
        if quantize == "fp8" and torchao_available is None:
            torchao_available = _runs_on_cuda("torchao")
        if wants_8bit and not bnb_available:
            canonical["optimizer_type"] = "AdamW"
            notes.append("optimizer_type AdamW8bit needs bitsandbytes on a CUDA GPU, which this machine lacks: training uses AdamW (same maths, more optimizer memory).")
        package = {"nf4": ("bitsandbytes", bnb_available), "fp8": ("torchao", torchao_available)}.get(quantize)
        if package is not None and not package[1]:
            canonical["quantize_base"] = "none"
            notes.append(f"quantize_base {quantize} needs {package[0]} on a CUDA GPU, which this machine lacks: the base stays unquantised.")
        return cls(**canonical, notes=notes)

    def to_dict(self) -> dict:
        """The settings as a `config.json` object (without `notes`)."""
        values = asdict(self)
        values.pop("notes")
        return values


def merged(zip_config: dict | None, call_config: dict | None, *, is_tiny: bool, bnb_available: bool | None = None) -> TrainConfig:
    """The config of a job: the zip's `config.json`, then the call's values on top (the call wins).

    Raises:
        TrainConfigError: as `TrainConfig.from_dict`; the message says which source a bad key came from.
    """
    zip_values, call_values = zip_config or {}, call_config or {}
    for label, values in (("the zip's config.json", zip_values), ("the call's config", call_values)):
        if not isinstance(values, dict):
            raise TrainConfigError(f'Training settings in {label} must be a JSON object such as {{"max_train_steps": 500}}, not {type(values).__name__}.')
        _, problems = _canonical_keys(values)
        if problems:
            raise TrainConfigError(f"Training settings in {label}: " + " ".join(problems))
    combined = _canonical_keys(zip_values)[0] | _canonical_keys(call_values)[0]
    return TrainConfig.from_dict(combined, is_tiny=is_tiny, bnb_available=bnb_available)


def is_due(step: int, every: int, total: int) -> bool:
    """Whether work done every `every` steps (0: only at the end) is due after `step` of `total`."""
    return step == total or (every > 0 and step % every == 0)


def due_count(every: int, total: int) -> int:
    """How many of the steps 1..`total` work done every `every` steps falls on (the last one always)."""
    return (total // every + (total % every != 0)) if every > 0 else 1


def check_job_bounds(config: TrainConfig, *, images: int, validation_images: int, bounds: Training) -> None:
    """Refuse a job whose work as a whole passes the Space's bounds (`settings.Training`).

    Each setting is capped on its own by `TrainConfig`; this bounds what they add up to: the
    images, steps x batch x megapixels, sample images (prompts x 2 strengths x sampling points)
    and validation images (held-out images x validation points).

    Args:
        config: the job's final config.
        images: usable images in its dataset.
        validation_images: of those, the ones held out for the validation loss.
        bounds: the Space's bounds.

    Raises:
        TrainConfigError: over a bound; the message names the settings, the bound and the fix.
    """
    problems = []
    if images > bounds.max_images:
        problems.append(
            f"the dataset has {images} usable images; this Space trains on at most {bounds.max_images} per job "
            "(LORA_SPACE_MAX_TRAIN_IMAGES): use fewer images."
        )
    megapixels = max(config.resolution**2 / 1_000_000, 0.25)
    work = config.max_train_steps * config.train_batch_size * megapixels
    if work > bounds.max_work:
        problems.append(
            f"max_train_steps {config.max_train_steps} x train_batch_size {config.train_batch_size} x {megapixels:.2f} megapixels "
            f"(resolution {config.resolution}, at least 0.25) is {work:,.0f} units of training work; this Space allows "
            f"{bounds.max_work:,.0f} per job (LORA_SPACE_MAX_TRAIN_WORK): lower max_train_steps, train_batch_size or resolution."
        )
    points = due_count(config.sample_every, config.max_train_steps)
    samples = config.sample_prompt_count * 2 * points
    if samples > bounds.max_sample_images:
        problems.append(
            f"sample_every {config.sample_every} with {config.sample_prompt_count} sample prompt(s) makes {samples} sample images "
            f"(each prompt at strength 0 and 1, at {points} points of the run); this Space allows {bounds.max_sample_images} "
            "per job (LORA_SPACE_MAX_SAMPLE_IMAGES): raise sample_every (0: only at the end) or give fewer validation_prompts."
        )
    points = due_count(config.validation_every, config.max_train_steps)
    if validation_images * points > bounds.max_validation_images:
        problems.append(
            f"validation_split {config.validation_split} holds out {validation_images} images, each measured at {points} points "
            f"of the run (every {config.validation_every} steps: checkpoint_every, else sample_every, else a tenth of "
            f"max_train_steps), {validation_images * points} validation images in all; this Space allows "
            f"{bounds.max_validation_images} per job (LORA_SPACE_MAX_VALIDATION_IMAGES): lower validation_split, or raise "
            "checkpoint_every or sample_every."
        )
    if problems:
        raise TrainConfigError("Training settings: " + " ".join(problems))


# --- helpers ---------------------------------------------------------------------------


def _canonical_keys(values: dict) -> tuple[dict, list[str]]:
    names = set(TrainConfig.setting_names())
    canonical: dict = {}
    problems: list[str] = []
    unknown = []
    for key, value in values.items():
        name = ALIASES.get(str(key).strip().lower(), str(key).strip().lower())
        if name not in names:
            unknown.append(str(key))
            continue
        if name in canonical:
            problems.append(f"{key!r} sets {name} a second time (another spelling of the same key); keep one.")
            continue
        canonical[name] = value
    if unknown:
        listed = ", ".join(repr(key) for key in unknown)
        problems.append(f"unknown key(s) {listed}; remove them or use the course's names: {', '.join(TrainConfig.setting_names())}.")
    return canonical, problems


_INTS = {"resolution", "train_batch_size", "lr_warmup_steps", "max_train_steps", "network_dim", "sample_every", "checkpoint_every", "seed"}
_FLOATS = {"learning_rate", "network_alpha", "validation_split"}
_BOOLS = {"gradient_checkpointing", "cache_latents"}
_LOWERCASE = {"lr_scheduler", "mixed_precision", "quantize_base"}
_STRINGS = {"model_name", "lr_scheduler", "optimizer_type", "trigger_word", "mixed_precision", "quantize_base"}


def _coerce(name: str, raw):
    """A JSON value (or its string form) as the field's type; ValueError names the key."""
    if name == "resolution" and isinstance(raw, str) and ("," in raw or "x" in raw.lower()):
        parts = [part.strip() for part in raw.lower().replace("x", ",").split(",")]
        if len(parts) == 2 and parts[0] == parts[1]:
            raw = parts[0]
        else:
            raise ValueError(f"resolution {raw!r}: give one number (square buckets of that area), e.g. 1024.")
    if name in _INTS:
        number = raw
        if isinstance(raw, str):
            try:
                number = float(raw.strip())
            except ValueError:
                raise ValueError(f"{name} {raw!r} is not a whole number; write e.g. {getattr(TrainConfig, name, 0) or 1}.") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number != int(number):
            raise ValueError(f"{name} {raw!r} is not a whole number; write e.g. {getattr(TrainConfig, name, 0) or 1}.")
        return int(number)
    if name in _FLOATS:
        number = raw
        if isinstance(raw, str):
            try:
                number = float(raw.strip())
            except ValueError:
                raise ValueError(f"{name} {raw!r} is not a number; write e.g. {getattr(TrainConfig, name)}.") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise ValueError(f"{name} {raw!r} is not a number; write e.g. {getattr(TrainConfig, name)}.")
        return float(number)
    if name in _BOOLS:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (int, str)) and str(raw).strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        raise ValueError(f"{name} {raw!r} is not true or false.")
    if name in _STRINGS:
        if not isinstance(raw, str):
            raise ValueError(f"{name} {raw!r} must be text.")
        return raw.strip().lower() if name in _LOWERCASE else raw.strip()
    if name == "validation_prompts":
        prompts = [raw] if isinstance(raw, str) else raw
        if not isinstance(prompts, list) or not all(isinstance(item, str) for item in prompts):
            raise ValueError('validation_prompts must be a list of texts, e.g. ["a harbour at dawn"].')
        return [item.strip() for item in prompts if item.strip()]
    return raw


def _resolve_model(name: str, *, is_tiny: bool, notes: list[str]) -> str:
    if name.lower() in FLUX_DEV_ALIASES:
        if is_tiny:
            notes.append(f"model_name {name!r} (FLUX.1-dev) trains the tiny test model in tiny mode.")
            return TINY
        return FLUX_DEV
    return name


def _runs_on_cuda(package: str) -> bool:
    """`package` is installed and CUDA is present (it is not imported here: importing bitsandbytes costs seconds)."""
    if importlib.util.find_spec(package) is None:
        return False
    import torch  # deferred: only where the package is installed

    return torch.cuda.is_available()


def _check_types(config: TrainConfig) -> list[str]:
    problems = []
    for name in TrainConfig.setting_names():
        value = getattr(config, name)
        if name in _INTS:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif name in _FLOATS:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif name in _BOOLS:
            ok = isinstance(value, bool)
        elif name in _STRINGS:
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        if not ok:
            problems.append(f"{name} {value!r} has the wrong type; see TrainConfig's fields or use TrainConfig.from_dict.")
    return problems


def _check_ranges(config: TrainConfig) -> list[str]:
    problems = []

    def need(ok: bool, text: str) -> None:
        if not ok:
            problems.append(text)

    need(config.model_name.strip() != "", "model_name is empty; write \"flux-dev-v1\" (FLUX.1-dev) or leave it out.")
    need(64 <= config.resolution <= 2048 and config.resolution % 16 == 0,
         f"resolution {config.resolution} must be 64..2048 and a multiple of 16; the course uses 1024, low memory 512.")
    need(1 <= config.train_batch_size <= 64, f"train_batch_size {config.train_batch_size} must be 1..64; the course uses 1-4.")
    need(0 < config.learning_rate <= 1, f"learning_rate {config.learning_rate} must be above 0 and at most 1; the course uses 0.0001-0.001.")
    need(config.lr_scheduler in SCHEDULERS, f"lr_scheduler {config.lr_scheduler!r} is unknown; use one of {', '.join(SCHEDULERS)} (the course: cosine).")
    need(1 <= config.max_train_steps <= 100_000, f"max_train_steps {config.max_train_steps} must be 1..100000; the course uses 500-1000.")
    need(0 <= config.lr_warmup_steps <= config.max_train_steps,
         f"lr_warmup_steps {config.lr_warmup_steps} must be 0..max_train_steps ({config.max_train_steps}).")
    need(1 <= config.network_dim <= 512, f"network_dim (rank) {config.network_dim} must be 1..512; the course uses 16-128.")
    need(0 < config.network_alpha <= 1024, f"network_alpha {config.network_alpha} must be above 0 and at most 1024; usually half the rank.")
    need(config.optimizer_type.lower() in OPTIMIZERS, f"optimizer_type {config.optimizer_type!r} is unknown; use AdamW or AdamW8bit.")
    need(0 <= config.validation_split <= 0.5, f"validation_split {config.validation_split} must be 0..0.5; the course holds out 0.2.")
    need(config.sample_every >= 0, f"sample_every {config.sample_every} must be 0 (only at the end) or a number of steps.")
    need(config.checkpoint_every >= 0, f"checkpoint_every {config.checkpoint_every} must be 0 (only the final LoRA) or a number of steps.")
    need(0 <= config.seed < 2**32, f"seed {config.seed} must be 0..4294967295.")
    need(config.mixed_precision in MIXED_PRECISIONS, f"mixed_precision {config.mixed_precision!r} is unknown; use one of {', '.join(MIXED_PRECISIONS)}.")
    need(config.quantize_base in QUANTIZATIONS, f"quantize_base {config.quantize_base!r} is unknown; use one of {', '.join(QUANTIZATIONS)}.")
    need(len(config.trigger_word) <= MAX_TRIGGER_CHARS and "\n" not in config.trigger_word,
         f"trigger_word must be one line of at most {MAX_TRIGGER_CHARS} characters.")
    need(len(config.validation_prompts) <= MAX_PROMPTS and all(len(text) <= MAX_PROMPT_CHARS for text in config.validation_prompts),
         f"validation_prompts: at most {MAX_PROMPTS} prompts of at most {MAX_PROMPT_CHARS} characters each.")
    return problems
