"""`@gpu`: a plain call off ZeroGPU; `spaces.GPU` with the duration on ZeroGPU, our errors carried across."""

from __future__ import annotations

import pytest

from lora_space import gpu
from lora_space.errors import JobError


def test_off_zerogpu_the_function_is_returned_unchanged(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.delenv(gpu.STANDIN, raising=False)

    def work(x: int) -> int:
        return x + 1

    assert gpu.gpu(duration=30)(work) is work


def test_on_zerogpu_spaces_gpu_gets_the_duration_and_our_errors_come_back_as_themselves(monkeypatch):
    seen = {}

    def fake_gpu(*, duration):
        seen["duration"] = duration

        def wrap(function):
            def scheduled(*args):
                # As spaces' worker: any exception other than gr.Error would reach the caller as a bare
                # "ZeroGPU worker error", so the function must hand ours back as a result.
                try:
                    return function(*args)
                except Exception as error:  # noqa: BLE001
                    return RuntimeError(f"ZeroGPU worker error: {type(error).__name__}")

            return scheduled

        return wrap

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(gpu.spaces, "GPU", fake_gpu)

    def work(fail: bool) -> str:
        if fail:
            raise JobError("The GPU ran out of memory at training step 5 of 12; resume it.")
        return "done"

    wrapped = gpu.gpu(duration=90)(work)
    assert seen["duration"] == 90
    assert wrapped(False) == "done"
    with pytest.raises(JobError, match="out of memory at training step 5"):
        wrapped(True)


def test_the_standin_mode_is_read_from_the_environment():
    assert gpu.standin_mode({gpu.STANDIN: "fork"}) == "fork" and gpu.on_zerogpu({gpu.STANDIN: "reuse"})
    assert gpu.standin_mode({gpu.STANDIN: "yes"}) == "" and not gpu.on_zerogpu({})


def test_spaces_refusals_become_gpu_unavailable_with_their_words(monkeypatch):
    import gradio as gr

    from lora_space.errors import GpuUnavailableError

    def fake_gpu(*, duration):
        def wrap(function):
            def scheduled(*args):
                raise gr.Error("You have exceeded your free ZeroGPU quota (120s requested vs. 44s left). Try again in 0:12:00.", title="ZeroGPU quota exceeded")

            return scheduled

        return wrap

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(gpu.spaces, "GPU", fake_gpu)
    with pytest.raises(GpuUnavailableError, match=r"ZeroGPU quota exceeded: You have exceeded your free ZeroGPU quota \(120s requested vs. 44s left\)"):
        gpu.gpu(duration=120)(lambda: None)()
