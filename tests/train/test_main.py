"""`python -m lora_space.train`: one process, and data-parallel on two CPU processes through torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lora_space.lora.safefile import load_lora_file, read_local_header
from lora_space.train.__main__ import main
from lora_space.train.checkpoint import JobFiles, load_state, read_json
from tests.app_process import free_port
from tests.train_factory import colour_zip

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"model_name": "flux-dev-v1", "resolution": 64, "max_train_steps": 6, "network_dim": 4, "network_alpha": 2,
          "learning_rate": 0.01, "optimizer_type": "AdamW8bit", "mixed_precision": "no", "trigger_word": "redstyle"}  # fmt: skip


def environment(tmp_path: Path) -> dict[str, str]:
    return os.environ | {"LORA_SPACE_BASE_MODEL": "tiny", "LORA_SPACE_DATA_DIR": str(tmp_path / "data"),
                         "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"), "OMP_NUM_THREADS": "1"}  # fmt: skip


def test_one_process_trains_resumes_and_refuses_bad_input(tmp_path, monkeypatch, capsys):
    for key, value in environment(tmp_path).items():
        monkeypatch.setenv(key, value)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    dataset = colour_zip(tmp_path / "red.zip")
    run = tmp_path / "run"
    args = ["--dataset", str(dataset), "--config", str(tmp_path / "config.json"), "--output", str(run), "--chunk-steps", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "step 4/6" in printed and "step 6/6" in printed and "AdamW8bit needs bitsandbytes" in printed
    header = read_local_header(JobFiles(run).final)
    assert header.metadata["ss_optimizer"] == "AdamW" and header.metadata["ss_sd_model_name"] == "tiny"
    assert main(["--output", str(run), "--resume"]) == 0  # a finished run stays finished
    assert main(["--output", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "holds no run" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"network_dim": 0}))
    assert main(["--dataset", str(dataset), "--config", str(tmp_path / "bad.json"), "--output", str(tmp_path / "bad")]) == 2
    assert "network_dim" in capsys.readouterr().err


def test_two_cpu_processes_train_data_parallel_with_torchrun(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    dataset = colour_zip(tmp_path / "red.zip")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "lora_space.train",
               "--dataset", str(dataset), "--config", str(tmp_path / "config.json"), "--output", str(run), "--chunk-steps", "3"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=environment(tmp_path), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 6/6" in done.stdout and "(2 process(es))" in done.stdout
    files = JobFiles(run)
    losses = [value for _, value in read_json(files.progress)["loss"]]
    assert len(losses) == 6 and np.isfinite(losses).all()
    state = load_state(files)
    assert state["step"] == 6 and sorted(state["rng"]) == ["train0", "train1"]  # each rank's RNG kept for resume
    tensors, _ = load_lora_file(files.final)
    assert any(float(tensor.abs().max()) > 0 for name, tensor in tensors.items() if "lora_B" in name)


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path, monkeypatch):
    for key, value in environment(tmp_path).items():
        monkeypatch.setenv(key, value)
    config = CONFIG | {"max_train_steps": 24, "validation_split": 0.2, "checkpoint_every": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    dataset = colour_zip(tmp_path / "red.zip")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    command = [sys.executable, "-m", "lora_space.train", "--dataset", str(dataset), "--config", str(tmp_path / "config.json"),
               "--output", str(killed), "--chunk-steps", "2"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=environment(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((killed / "state").glob("step_00000[4-9]")) and time.monotonic() < deadline:
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert load_state(JobFiles(killed))["step"] < 24 and not JobFiles(killed).final.exists()
    assert main(["--output", str(killed), "--resume", "--chunk-steps", "10"]) == 0
    assert main(["--dataset", str(dataset), "--config", str(tmp_path / "config.json"), "--output", str(whole), "--chunk-steps", "24"]) == 0
    expected, _ = load_lora_file(JobFiles(whole).final)
    got, _ = load_lora_file(JobFiles(killed).final)
    for name in expected:  # exactly equal, wherever the kill landed
        assert torch.equal(expected[name], got[name]), name
