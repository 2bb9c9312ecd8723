"""The typed errors of LoRA Space.

Every message says what is wrong and how to fix it. The UI turns a `LoraSpaceError`
into a `gr.Error` in one place (`lora_space.ui.errors.user_errors`); anything else is
logged and reported as an internal error without its details.
"""

from __future__ import annotations


class LoraSpaceError(Exception):
    """Base class: a problem the user can act on. `str(error)` is shown to them."""


class SettingsError(LoraSpaceError):
    """A setting (environment variable) is wrong; the app refuses to start."""


class BaseModelError(LoraSpaceError):
    """The base model cannot be loaded (gated, no token, no network, not a FLUX pipeline)."""


class LoraFileError(LoraSpaceError):
    """A LoRA file is unsafe, malformed, or does not fit the base model."""


class UnsafeFileError(LoraFileError):
    """A file that would need unpickling, or whose header breaks the safety bounds."""


class PromptError(LoraSpaceError):
    """A `<lora:...>` tag or a prompt is malformed."""


class LimitError(LoraSpaceError):
    """A request is outside the limits (steps, size, number of images or LoRAs)."""


class HubError(LoraSpaceError):
    """A Hub call failed: not found, gated, unauthorised, offline."""


class DatasetError(LoraSpaceError):
    """A training dataset cannot be used."""


class TrainConfigError(LoraSpaceError):
    """A training setting is unknown or out of range; the message names the key and the fix."""


class GpuUnavailableError(LoraSpaceError):
    """ZeroGPU gave no GPU for a call: the visitor's quota is spent, none was free, or the worker aborted."""


class JobError(LoraSpaceError):
    """A training job is unknown or cannot be changed in its state."""


class PublishError(LoraSpaceError):
    """Publishing was refused: no login, wrong namespace, existing repo."""
