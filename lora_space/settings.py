"""Settings, read once from the environment (see API.md and the README).

`Settings.from_env()` is the one place that knows the variable names and the defaults.
A bad value raises `SettingsError` with one line that says which variable and how to fix it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SettingsError

TINY = "tiny"
FLUX_DEV = "black-forest-labs/FLUX.1-dev"
SPACE_DATA_ROOT = Path("/data")


def _cuda_available() -> bool:
    import torch  # deferred: `import spaces` must run before torch touches CUDA

    return torch.cuda.is_available()


def _default_base_model() -> str:
    return FLUX_DEV if _cuda_available() else TINY


def _compile(env: Mapping[str, str]) -> bool:
    """`LORA_SPACE_COMPILE`: `auto` (on where CUDA is, except on ZeroGPU), `on` or `off`."""
    from .gpu import on_zerogpu

    raw = env.get("LORA_SPACE_COMPILE", "").strip().lower() or "auto"
    if raw not in ("auto", "on", "off"):
        raise SettingsError(f"LORA_SPACE_COMPILE={raw!r} is not a choice; set it to auto, on or off.")
    if raw == "auto":
        return _cuda_available() and not on_zerogpu(env)
    return raw == "on"


def _default_data_dir() -> Path:
    if SPACE_DATA_ROOT.is_dir() and os.access(SPACE_DATA_ROOT, os.W_OK):
        return SPACE_DATA_ROOT / "lora-space"
    return Path("data")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number; set it to an integer from {low} to {high}.") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is out of range; set it to an integer from {low} to {high}.")
    return value


def _looks_like_hub_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not value.startswith((".", "~"))


def _check_writable(name: str, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        raise SettingsError(
            f"{name}={str(path)!r} is not a writable folder ({error.strerror or error}); "
            f"point {name} at a folder this process can write to."
        ) from None


@dataclass(frozen=True)
class Limits:
    """Request limits, checked before any GPU time is asked for (API.md)."""

    max_steps: int = 100
    min_size: int = 64
    max_size: int = 2048
    size_multiple: int = 16
    max_images: int = 8
    max_loras: int = 6
    max_prompt_chars: int = 4000
    max_lora_bytes: int = 2 * 1024**3  # a Hub LoRA larger than this is not downloaded
    max_work: float = 600.0  # steps x images x megapixels x CFG passes of one call (FLUX.1-dev: ~0.3 GPU s each)
    max_requests_per_visitor: int = 2  # calls one visitor may have running at once (a Space's visitors)
    max_requests_per_address: int = 6  # calls one client address may have running at once, whatever visitors it claims to be
    max_tool_work: float = 150.0  # billions of SVD operations one LoRA tool call may do (`lora.tools.svd_work`)
    max_caption_images: int = 100  # images one auto-caption call may caption
    dataset_calls: int = 2  # dataset zips read at once (previews and Start), all visitors together
    queue_size: int = 64  # calls waiting in Gradio's queue; more are turned away at once
    max_sessions: int = 1000  # sessions whose state Gradio keeps in memory (~0.6 MB each); the oldest go first

    def work(self, options, *, images: int | None = None) -> float:
        """The GPU work of `images` images made with `options`: steps x images x megapixels x CFG passes.

        True CFG (`true_cfg` > 1 with a negative prompt) runs the model twice per step. Sizes below
        0.25 megapixels count as 0.25, as the model's fixed costs dominate there.
        """
        passes = 2 if options.negative_prompt and options.true_cfg > 1 else 1
        megapixels = max(options.width * options.height / 1_000_000, 0.25)
        count = options.num_images if images is None else images
        return options.steps * count * megapixels * passes


@dataclass(frozen=True)
class Storage:
    """Disk bounds and the cleaning schedule (API.md "Who owns what"; `lora_space.cleanup`).

    Args:
        max_upload_bytes: the largest file a visitor may upload (Gradio refuses larger ones).
        visitor_quota_bytes: what one visitor's area (`data_dir/visitors/<id>`) may hold.
        visitor_max_age_s: what in a visitor's area has not changed for this long is deleted.
        output_max_age_s: call outputs (`data_dir/outputs`) and Gradio's copies are deleted after this.
        clean_every_s: how often the cleaner runs.
        write_bytes_per_hour: what calls may write to disk in one hour, all visitors together (a Space).
        min_free_bytes: a write is refused while the data folder's disk has less free than this (a Space).
        outputs_bytes: call outputs beyond this are deleted, least recently used first (a Space).
        hub_cache_bytes: downloads in the Hub cache beyond this are deleted, least recently used first
            (a Space; never the base model, never the shared library).
    """

    max_upload_bytes: int = 2 * 1024**3
    visitor_quota_bytes: int = 5 * 1024**3
    visitor_max_age_s: int = 7 * 24 * 3600
    output_max_age_s: int = 24 * 3600
    clean_every_s: int = 3600
    write_bytes_per_hour: int = 10 * 1024**3
    min_free_bytes: int = 2 * 1024**3
    outputs_bytes: int = 10 * 1024**3
    hub_cache_bytes: int = 20 * 1024**3

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "visitor_quota_bytes", "visitor_max_age_s", "output_max_age_s", "clean_every_s",
                     "write_bytes_per_hour", "outputs_bytes", "hub_cache_bytes"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"Storage.{name} must be positive, not {getattr(self, name)}.")


@dataclass(frozen=True)
class Training:
    """Bounds on training jobs, checked when a job is started or resumed, before any GPU time.

    A job's work is bounded as a whole, not only each setting on its own (each is named in the
    refusal, with the bound and how to get under it):

    Args:
        max_jobs: jobs waiting and running at once, over all visitors; more are refused at once.
        max_images: images one job trains on (each is encoded once into the job's latent cache).
        max_work: training work of one job: max_train_steps x train_batch_size x megapixels of the
            training resolution (at least 0.25 each, as a generation counts its images).
        max_sample_images: sample images of one job: sample prompts x 2 strengths x sampling points.
        max_validation_images: held-out images x validation points: the images the validation
            loss passes through over the whole job.
    """

    max_jobs: int = 10
    max_images: int = 1000
    max_work: float = 10_000.0
    max_sample_images: int = 200
    max_validation_images: int = 500


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment.

    Args:
        base_model: a Hub id, a local diffusers folder, or `tiny`.
        lora_dir: the local LoRA library (the course's `models/loras/`).
        data_dir: datasets, jobs, checkpoints and outputs.
        hf_endpoint: the Hub to talk to (`HF_ENDPOINT`); every Hub call uses it.
        hf_offline: `HF_HUB_OFFLINE` is set: no Hub call is made.
        adapter_cache_size: how many LoRAs the engine keeps loaded (LRU).
        fuse_memory_mb: CPU memory for the original weights of fused layers, so that unfusing
            restores them exactly; a mix that needs more runs unfused (0: never fuse).
        limits: request limits; settings may lower the API's.
        storage: upload size, visitor quota, ages and the cleaning schedule (`lora_space.cleanup`).
        training: bounds on training jobs (`Training`).
        on_space: running as a Hugging Face Space (`SPACE_ID` is set): many visitors, each owning
            only what they add (API.md "Who owns what"); off a Space one local user owns everything.
        compile: run the transformer under torch.compile with LoRAs hot-swapped into fixed slots
            (`lora_space.compiled`); by default on where CUDA is, except on ZeroGPU.
        compile_slots: LoRAs one request may have on the compiled path (more run eager).
        compile_rank: the largest LoRA rank the compiled slots hold (higher ranks run eager).
        proxy_hops: reverse proxies in front of the app that append the address they saw to
            `X-Forwarded-For` (`ui.visitors.client_address`): 1 on a Space (Hugging Face's), else 0.
    """

    base_model: str
    lora_dir: Path
    data_dir: Path
    hf_endpoint: str = "https://huggingface.co"
    hf_offline: bool = False
    adapter_cache_size: int = 8
    fuse_memory_mb: int = 8192
    limits: Limits = field(default_factory=Limits)
    storage: Storage = field(default_factory=Storage)
    training: Training = field(default_factory=Training)
    on_space: bool = False
    compile: bool = False
    compile_slots: int = 3
    compile_rank: int = 64
    proxy_hops: int = 0

    @property
    def is_tiny(self) -> bool:
        return self.base_model == TINY

    @property
    def base_model_label(self) -> str:
        """How images and results name the base model: its Hub id, `tiny`, or a local folder's
        name alone (never a server path)."""
        return Path(self.base_model).name if Path(self.base_model).is_absolute() or Path(self.base_model).is_dir() else self.base_model

    @property
    def hub_base_model(self) -> str:
        """The Hub id LoRAs are searched for: tiny stands in for FLUX.1-dev."""
        if self.is_tiny or Path(self.base_model).is_dir():
            return FLUX_DEV
        return self.base_model

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, check: bool = True) -> Settings:
        """Read the settings; with `check`, also make the folders and validate the base model."""
        env = os.environ if env is None else env
        base_model = env.get("LORA_SPACE_BASE_MODEL", "").strip() or _default_base_model()
        lora_dir = Path(env.get("LORA_SPACE_LORA_DIR", "").strip() or "models/loras")
        data_dir = Path(env.get("LORA_SPACE_DATA_DIR", "").strip() or _default_data_dir())
        default_limits = Limits()
        limits = Limits(
            max_steps=_int(env, "LORA_SPACE_MAX_STEPS", default_limits.max_steps, 1, default_limits.max_steps),
            max_size=_int(env, "LORA_SPACE_MAX_SIZE", default_limits.max_size, 64, default_limits.max_size),
            max_images=_int(env, "LORA_SPACE_MAX_IMAGES", default_limits.max_images, 1, default_limits.max_images),
            max_work=_int(env, "LORA_SPACE_MAX_WORK", int(default_limits.max_work), 1, 100_000),
            max_requests_per_visitor=_int(env, "LORA_SPACE_VISITOR_REQUESTS", default_limits.max_requests_per_visitor, 1, 64),
            max_requests_per_address=_int(env, "LORA_SPACE_ADDRESS_REQUESTS", default_limits.max_requests_per_address, 1, 1024),
            max_tool_work=_int(env, "LORA_SPACE_MAX_TOOL_WORK", int(default_limits.max_tool_work), 1, 10**7),
            max_caption_images=_int(env, "LORA_SPACE_MAX_CAPTION_IMAGES", default_limits.max_caption_images, 1, 100_000),
            dataset_calls=_int(env, "LORA_SPACE_DATASET_CALLS", default_limits.dataset_calls, 1, 64),
            queue_size=_int(env, "LORA_SPACE_QUEUE_SIZE", default_limits.queue_size, 1, 10_000),
            max_sessions=_int(env, "LORA_SPACE_SESSIONS", default_limits.max_sessions, 10, 100_000),
        )
        on_space = bool(env.get("SPACE_ID", "").strip())
        settings = cls(
            base_model=base_model,
            lora_dir=lora_dir,
            data_dir=data_dir,
            hf_endpoint=(env.get("HF_ENDPOINT", "").strip() or "https://huggingface.co").rstrip("/"),
            hf_offline=env.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"},
            adapter_cache_size=_int(env, "LORA_SPACE_ADAPTER_CACHE", 8, 1, 256),
            fuse_memory_mb=_int(env, "LORA_SPACE_FUSE_MEMORY_MB", 8192, 0, 1024**2),
            limits=limits,
            storage=Storage(
                max_upload_bytes=_int(env, "LORA_SPACE_MAX_UPLOAD_MB", 2048, 1, 1024**2) * 2**20,
                visitor_quota_bytes=_int(env, "LORA_SPACE_VISITOR_QUOTA_MB", 5120, 1, 1024**3) * 2**20,
                visitor_max_age_s=_int(env, "LORA_SPACE_VISITOR_DAYS", 7, 1, 3650) * 24 * 3600,
                output_max_age_s=_int(env, "LORA_SPACE_OUTPUT_HOURS", 24, 1, 24 * 3650) * 3600,
                clean_every_s=_int(env, "LORA_SPACE_CLEAN_MINUTES", 60, 1, 7 * 24 * 60) * 60,
                write_bytes_per_hour=_int(env, "LORA_SPACE_WRITE_MB_PER_HOUR", 10240, 1, 1024**3) * 2**20,
                min_free_bytes=_int(env, "LORA_SPACE_MIN_FREE_MB", 2048, 0, 1024**3) * 2**20,
                outputs_bytes=_int(env, "LORA_SPACE_OUTPUTS_MB", 10240, 1, 1024**3) * 2**20,
                hub_cache_bytes=_int(env, "LORA_SPACE_HUB_CACHE_MB", 20480, 1, 1024**3) * 2**20,
            ),
            training=Training(
                max_jobs=_int(env, "LORA_SPACE_MAX_JOBS", Training.max_jobs, 1, 10_000),
                max_images=_int(env, "LORA_SPACE_MAX_TRAIN_IMAGES", Training.max_images, 1, 100_000),
                max_work=_int(env, "LORA_SPACE_MAX_TRAIN_WORK", int(Training.max_work), 1, 10_000_000),
                max_sample_images=_int(env, "LORA_SPACE_MAX_SAMPLE_IMAGES", Training.max_sample_images, 2, 100_000),
                max_validation_images=_int(env, "LORA_SPACE_MAX_VALIDATION_IMAGES", Training.max_validation_images, 0, 1_000_000),
            ),
            compile=_compile(env),
            compile_slots=_int(env, "LORA_SPACE_COMPILE_SLOTS", 3, 1, default_limits.max_loras),
            compile_rank=_int(env, "LORA_SPACE_COMPILE_RANK", 64, 1, 1024),
            on_space=on_space,
            proxy_hops=_int(env, "LORA_SPACE_PROXY_HOPS", 1 if on_space else 0, 0, 16),
        )
        if check:
            settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings the app cannot start with, in one line each."""
        if not self.is_tiny and not Path(self.base_model).is_dir() and not _looks_like_hub_id(self.base_model):
            raise SettingsError(
                f"LORA_SPACE_BASE_MODEL={self.base_model!r} is neither 'tiny', an existing local folder, "
                "nor a Hub id like 'black-forest-labs/FLUX.1-dev'; fix the path or the id."
            )
        _check_writable("LORA_SPACE_DATA_DIR", self.data_dir)
        _check_writable("LORA_SPACE_LORA_DIR", self.lora_dir)
