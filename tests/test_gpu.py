"""`@gpu`: a plain call off ZeroGPU; `spaces.GPU` with the duration on ZeroGPU."""

from __future__ import annotations

from lora_space import gpu


def test_off_zerogpu_the_function_is_returned_unchanged(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    def work(x: int) -> int:
        return x + 1

    assert gpu.gpu(duration=30)(work) is work


def test_on_zerogpu_spaces_gpu_gets_the_duration(monkeypatch):
    seen = {}

    def fake_gpu(*, duration):
        seen["duration"] = duration
        return lambda function: ("wrapped", function)

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(gpu.spaces, "GPU", fake_gpu)

    def work() -> None: ...

    assert gpu.gpu(duration=90)(work) == ("wrapped", work)
    assert seen["duration"] == 90
