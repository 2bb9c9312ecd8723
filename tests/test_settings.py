"""Settings: defaults from API.md, one clear line for each bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_space.errors import SettingsError
from lora_space.settings import FLUX_DEV, TINY, Settings

REPO = Path(__file__).resolve().parents[1]


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"LORA_SPACE_DATA_DIR": str(tmp_path / "data"), "LORA_SPACE_LORA_DIR": str(tmp_path / "loras")} | extra


def test_defaults_without_cuda_are_tiny_and_local_folders(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({}, check=False)
    assert settings.base_model == TINY  # no CUDA on this machine
    assert settings.lora_dir == Path("models/loras")
    assert settings.data_dir in (Path("data"), Path("/data/lora-space"))
    assert settings.hub_base_model == FLUX_DEV  # tiny stands in for FLUX.1-dev on the Hub
    assert settings.limits.max_steps == 100 and settings.limits.max_loras == 6


def test_env_values_are_read(tmp_path):
    settings = Settings.from_env(
        env_for(tmp_path, LORA_SPACE_BASE_MODEL="user/model", HF_ENDPOINT="http://127.0.0.1:9/", LORA_SPACE_MAX_STEPS="20")
    )
    assert settings.base_model == "user/model"
    assert settings.hf_endpoint == "http://127.0.0.1:9"
    assert settings.limits.max_steps == 20
    assert settings.data_dir.is_dir() and settings.lora_dir.is_dir()


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"LORA_SPACE_BASE_MODEL": "./no/such/folder"}, "LORA_SPACE_BASE_MODEL"),
        ({"LORA_SPACE_MAX_STEPS": "many"}, "LORA_SPACE_MAX_STEPS"),
        ({"LORA_SPACE_MAX_STEPS": "500"}, "from 1 to 100"),
    ],
)
def test_bad_values_name_the_variable(tmp_path, extra, words):
    with pytest.raises(SettingsError, match=words):
        Settings.from_env(env_for(tmp_path, **extra))


def test_unwritable_data_dir_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SettingsError, match="LORA_SPACE_DATA_DIR.*not a writable folder"):
        Settings.from_env(env_for(tmp_path, LORA_SPACE_DATA_DIR=str(blocker / "sub")))


@pytest.mark.parametrize(
    "extra",
    [{"LORA_SPACE_BASE_MODEL": "/no/such/model/folder"}, {"LORA_SPACE_DATA_DIR": "/proc/lora-space"}],
)
def test_app_stops_at_start_with_one_line(tmp_path, extra):
    env = os.environ | env_for(tmp_path, **extra) | {"LORA_SPACE_BASE_MODEL": extra.get("LORA_SPACE_BASE_MODEL", "tiny")}
    done = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("LoRA Space cannot start")]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert next(iter(extra)) in lines[0]


def test_training_bounds_are_read_and_a_bad_one_names_its_variable(tmp_path):
    settings = Settings.from_env(env_for(tmp_path, LORA_SPACE_MAX_JOBS="3", LORA_SPACE_MAX_TRAIN_WORK="500", LORA_SPACE_MAX_SAMPLE_IMAGES="20"))
    assert (settings.training.max_jobs, settings.training.max_work, settings.training.max_sample_images) == (3, 500, 20)
    assert settings.training.max_images == 1000 and settings.training.max_validation_images == 500  # the defaults
    with pytest.raises(SettingsError, match="LORA_SPACE_MAX_JOBS=0 is out of range"):
        Settings.from_env(env_for(tmp_path, LORA_SPACE_MAX_JOBS="0"))


def test_compiled_generation_is_off_on_a_cpu_and_on_zerogpu_unless_asked_for(tmp_path):
    assert Settings.from_env(env_for(tmp_path)).compile is False  # no CUDA here: `auto` is off
    assert Settings.from_env(env_for(tmp_path, SPACES_ZERO_GPU="true")).compile is False
    asked = Settings.from_env(env_for(tmp_path, LORA_SPACE_COMPILE="on", LORA_SPACE_COMPILE_SLOTS="4", LORA_SPACE_COMPILE_RANK="128"))
    assert (asked.compile, asked.compile_slots, asked.compile_rank) == (True, 4, 128)
    assert Settings.from_env(env_for(tmp_path, LORA_SPACE_COMPILE="OFF")).compile is False
    with pytest.raises(SettingsError, match="LORA_SPACE_COMPILE='fast' is not a choice; set it to auto, on or off"):
        Settings.from_env(env_for(tmp_path, LORA_SPACE_COMPILE="fast"))
    with pytest.raises(SettingsError, match="LORA_SPACE_COMPILE_SLOTS=7 is out of range"):
        Settings.from_env(env_for(tmp_path, LORA_SPACE_COMPILE_SLOTS="7"))


def test_auto_turns_compiled_generation_on_where_cuda_is_except_on_zerogpu(monkeypatch, tmp_path):
    monkeypatch.setattr("lora_space.settings._cuda_available", lambda: True)  # no CUDA on this machine
    assert Settings.from_env(env_for(tmp_path, LORA_SPACE_BASE_MODEL="tiny")).compile is True
    assert Settings.from_env(env_for(tmp_path, LORA_SPACE_BASE_MODEL="tiny", SPACES_ZERO_GPU="1")).compile is False
