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


HIDDEN_RUN = """
import sys
import lora_space.gpu
hidden = lora_space.gpu.hide_cuda_only_packages() if sys.argv[1] == "hide" else False
from pathlib import Path
import tempfile
from lora_space.engine import Engine, GenerationRequest, LoraSpec, Options
from lora_space.tiny import build_tiny_pipeline
from lora_space.train.config import TrainConfig
from tests.lora_factory import write_lora
lora = write_lora(Path(tempfile.mkdtemp()) / "a.safetensors", 0)
result = Engine(build_tiny_pipeline()).generate(GenerationRequest(
    prompt="a cat", options=Options(seed=1, steps=2, width=64, height=64), loras=(LoraSpec(str(lora), str(lora), "a", 0.8),)))
config = TrainConfig.from_dict({"optimizer_type": "AdamW8bit", "quantize_base": "fp8"}, is_tiny=False)
imported = [name for name in lora_space.gpu.CUDA_ONLY_PACKAGES if sys.modules.get(name) is not None]
print(hidden, imported, len(result.images), config.optimizer_type, config.quantize_base, len(config.notes))
"""


def test_without_cuda_entry_points_hide_bitsandbytes_and_torchao_and_loras_and_fallbacks_still_work():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]

    def run(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", HIDDEN_RUN, mode], cwd=repo, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    # app.py and `python -m lora_space.train` hide them: diffusers, transformers and peft skip them,
    # a LoRA still loads, and the trainer's fallbacks are reported as where they are not installed.
    assert run("hide") == "True [] 1 AdamW none 2"
    if sys.platform != "darwin":  # installed there (requirements.txt): without hiding, importing diffusers imports them
        assert run("plain") == "False ['bitsandbytes', 'torchao'] 1 AdamW none 2"
