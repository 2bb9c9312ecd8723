"""`@gpu(duration=...)`: `spaces.GPU` on ZeroGPU, a plain call elsewhere.

Import this module before anything imports torch: on ZeroGPU `import spaces` must come
before CUDA is initialised. Off ZeroGPU `spaces.GPU` hands the function back unchanged.
On ZeroGPU the function runs in a forked worker: what it changes on modules (adapters
loaded, weights fused) does not reach the main process, so all adapter work for a
request happens inside the decorated function.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

try:
    import spaces
except ImportError:  # `spaces` is in requirements.txt; tolerate its absence off a Space
    spaces = None

F = TypeVar("F", bound=Callable)

CUDA_ONLY_PACKAGES = ("bitsandbytes", "torchao")  # requirements.txt: AdamW8bit, the nf4 and fp8 bases


def on_zerogpu(env: Mapping[str, str] | None = None) -> bool:
    """True inside a Hugging Face Space running on ZeroGPU hardware (`env`: default the process's)."""
    return (os.environ if env is None else env).get("SPACES_ZERO_GPU", "").lower() in {"1", "true"}


def gpu(duration: int | Callable[..., int] = 60) -> Callable[[F], F]:
    """Decorate a function that needs the GPU for about `duration` seconds.

    `duration` may be a callable that gets the call's arguments (ZeroGPU calls it).
    """

    def decorate(function: F) -> F:
        if spaces is None or not on_zerogpu():
            return function
        return spaces.GPU(duration=duration)(function)

    return decorate


def hide_cuda_only_packages() -> bool:
    """Without CUDA, make bitsandbytes and torchao look absent to this process; returns whether it did.

    requirements.txt installs them wherever CUDA may run, but diffusers, transformers and peft
    import them as soon as they are installed: seconds at every start on a CPU, and bitsandbytes
    asks the Hub for a CPU kernel on processors with AVX512-BF16. With `sys.modules[name] = None`,
    `importlib.util.find_spec` reports them missing and `import` raises ImportError, so those
    libraries skip them and the trainer falls back (AdamW, an unquantised base) and says so, as
    where they are not installed. For entry points (app.py), before diffusers is imported;
    nothing changes on ZeroGPU or where CUDA is.
    """
    import torch  # after `spaces` (imported above)

    if on_zerogpu() or torch.cuda.is_available():
        return False
    for name in CUDA_ONLY_PACKAGES:
        sys.modules.setdefault(name, None)  # one already imported stays
    return True
