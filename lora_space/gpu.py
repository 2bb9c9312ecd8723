"""`@gpu(duration=...)`: `spaces.GPU` on ZeroGPU, a plain call elsewhere, and a stand-in for tests.

Import this module before anything imports torch: on ZeroGPU `import spaces` must come
before CUDA is initialised. Off ZeroGPU `spaces.GPU` hands the function back unchanged.

On ZeroGPU (spaces 0.51, `spaces/zero/wrappers.py`) the function runs in a forked worker:
its arguments and result are pickled; what it changes on modules (adapters loaded, weights
fused, a training session kept) does not reach the main process; a worker is reused for the
next call only when it is idle, else a fresh fork of the main process runs it. The call is
scheduled with the Gradio request current in the caller's context (`LocalContext.request`),
whose `X-IP-Token` header says whose quota pays: a call from a thread with no request is
charged to nobody's. An exception other than `gr.Error` reaches the caller as a bare "ZeroGPU
worker error", so `gpu` carries LoRA Space's own errors across as results and raises them again;
spaces' own refusals (`gr.Error`: quota spent, no GPU free, the worker aborted) become
`GpuUnavailableError` with their words.

The stand-in (`LORA_SPACE_ZEROGPU_STANDIN=fork` or `reuse`, read at import) runs each
decorated call that way on any machine, for tests: in a forked worker, a fresh one per call
(`fork`) or one kept per function and reused while idle (`reuse`), arguments and results
pickled, and with `LORA_SPACE_ZEROGPU_STANDIN_LOG=FILE` one JSON line per call: the function,
the worker's pid, whether it was fresh, and the session and `X-IP-Token` (a digest) of the
request that was current, as `spaces` would have scheduled it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import pickle
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from .errors import GpuUnavailableError, LoraSpaceError

try:
    import spaces
except ImportError:  # `spaces` is in requirements.txt; tolerate its absence off a Space
    spaces = None

F = TypeVar("F", bound=Callable)

CUDA_ONLY_PACKAGES = ("bitsandbytes", "torchao")  # requirements.txt: AdamW8bit, the nf4 and fp8 bases
STANDIN = "LORA_SPACE_ZEROGPU_STANDIN"
STANDIN_LOG = "LORA_SPACE_ZEROGPU_STANDIN_LOG"
STANDIN_MODES = ("fork", "reuse")


def standin_mode(env: Mapping[str, str] | None = None) -> str:
    """The ZeroGPU stand-in's mode (`fork`, `reuse`), or "" when it is off."""
    mode = (os.environ if env is None else env).get(STANDIN, "").strip().lower()
    return mode if mode in STANDIN_MODES else ""


def on_zerogpu_hardware(env: Mapping[str, str] | None = None) -> bool:
    """True inside a Hugging Face Space running on ZeroGPU hardware (`env`: default the process's)."""
    return (os.environ if env is None else env).get("SPACES_ZERO_GPU", "").lower() in {"1", "true"}


def on_zerogpu(env: Mapping[str, str] | None = None) -> bool:
    """True on ZeroGPU hardware, or under the stand-in that plays it: how the app behaves (jobs in requests)."""
    return on_zerogpu_hardware(env) or bool(standin_mode(env))


def gpu(duration: int | Callable[..., int] = 60) -> Callable[[F], F]:
    """Decorate a function that needs the GPU for about `duration` seconds.

    `duration` may be a callable that gets the call's arguments (ZeroGPU calls it). A
    `LoraSpaceError` or `FloatingPointError` raised inside reaches the caller as itself.
    """

    def decorate(function: F) -> F:
        mode = standin_mode()
        if mode:
            return _raising(_StandIn(_catching(function), duration, reuse=mode == "reuse"))  # type: ignore[return-value]
        if spaces is None or not on_zerogpu_hardware():
            return function
        return _raising(spaces.GPU(duration=duration)(_catching(function)))  # type: ignore[return-value]

    return decorate


@dataclass
class _Raised:
    """An error of ours raised inside the GPU function, sent back as a (pickled) result."""

    error: BaseException


def _catching(function: Callable) -> Callable:
    @functools.wraps(function)
    def inside(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (LoraSpaceError, FloatingPointError) as error:
            return _Raised(error)

    return inside


def _raising(gpu_function: Callable) -> Callable:
    @functools.wraps(gpu_function)
    def outside(*args, **kwargs):
        try:
            result = gpu_function(*args, **kwargs)
        except Exception as error:
            import gradio as gr  # only on ZeroGPU: spaces' scheduling errors are gr.Error

            if isinstance(error, gr.Error):  # quota spent, no GPU free, the worker aborted: its own words
                raise GpuUnavailableError(f"{error.title}: {error.message}" if getattr(error, "title", "") else str(error.message)) from error
            raise
        if isinstance(result, _Raised):
            raise result.error
        return result

    return outside


# -- the ZeroGPU stand-in (tests) ------------------------------------------------------------


class _Worker:
    """A forked process that runs the function for each pickled call it receives (`spaces`' Worker)."""

    def __init__(self, function: Callable) -> None:
        context = multiprocessing.get_context("fork")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(function, child, self.connection), daemon=True)
        self.process.start()
        child.close()
        self.fresh = True

    def call(self, args: tuple, kwargs: dict):
        self.connection.send_bytes(pickle.dumps((args, kwargs)))  # a PicklingError surfaces here, as in spaces
        try:
            ok, payload = pickle.loads(self.connection.recv_bytes())
        except EOFError:
            raise RuntimeError("ZeroGPU worker error: GPU task aborted (the worker died)") from None
        self.fresh = False
        if ok:
            return payload
        import gradio as gr

        error_class, text = payload
        raise gr.Error(f"ZeroGPU worker error: {error_class}", title="ZeroGPU worker error", print_exception=False) from RuntimeError(text)

    def stop(self) -> None:
        self.connection.close()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


def _serve(function: Callable, connection, parent_end) -> None:
    """The worker's loop: a call in, its result (or the error's class and traceback) out, until the parent closes its end."""
    parent_end.close()  # the fork's copy: with it open, the parent closing its end would never end this loop
    _drop_tqdm_process_lock()
    _exit_with_parent()
    while True:
        try:
            args, kwargs = pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            answer = (True, function(*args, **kwargs))
        except Exception as error:  # as spaces: only the class name reaches the caller
            answer = (False, (type(error).__name__, traceback.format_exc()))
        try:
            connection.send_bytes(pickle.dumps(answer))
        except Exception as error:  # an unpicklable result
            connection.send_bytes(pickle.dumps((False, (type(error).__name__, traceback.format_exc()))))


def token_digest(token: str | None) -> str | None:
    """What the stand-in's log keeps of an `X-IP-Token`: a short digest, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else None


def _exit_with_parent() -> None:
    """A worker whose parent died (a killed app) stops at once instead of training on unseen."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _drop_tqdm_process_lock() -> None:
    """As spaces' `worker_init`: progress bars in the worker keep tqdm's thread lock only, not the
    lock it shares between processes (held by the parent at the fork, it would block the worker)."""
    try:
        from multiprocessing.synchronize import RLock
        from tqdm import tqdm
    except ImportError:
        return
    lock = tqdm.get_lock()
    lock.locks = [item for item in getattr(lock, "locks", []) if not isinstance(item, RLock)]


class _StandIn:
    """Run `function` as ZeroGPU does: in a forked worker, fresh per call or reused while idle."""

    def __init__(self, function: Callable, duration, *, reuse: bool) -> None:
        functools.update_wrapper(self, function)
        self.function, self.duration, self.reuse = function, duration, reuse
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        # 1. What spaces' handler reads before scheduling: the current request and the duration.
        from gradio.context import LocalContext

        request = LocalContext.request.get(None)
        seconds = self.duration(*args, **kwargs) if callable(self.duration) else self.duration
        # 2. A worker: the idle one (reuse) or a fresh fork of this process.
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None or not worker.process.is_alive():
            worker = _Worker(self.function)
        self._record(request, worker, seconds)
        try:
            result = worker.call(args, kwargs)
        except BaseException:
            worker.stop()  # a failed worker is never reused
            raise
        if self.reuse:
            with self._lock:
                self._idle.append(worker)
        else:
            worker.stop()
        return result

    def _record(self, request, worker: _Worker, seconds) -> None:
        path = os.environ.get(STANDIN_LOG, "")
        if not path:
            return
        headers = getattr(request, "headers", None) or {}
        line = {
            "function": self.function.__qualname__, "worker": worker.process.pid, "fresh": worker.fresh,
            "duration": seconds, "session": getattr(request, "session_hash", None), "ip_token": token_digest(headers.get("x-ip-token")),
        }  # fmt: skip
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")


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

    if on_zerogpu_hardware() or torch.cuda.is_available():
        return False
    for name in CUDA_ONLY_PACKAGES:
        sys.modules.setdefault(name, None)  # one already imported stays
    return True
