"""Shared fixtures: the tiny pipeline (built once) and settings pointing at temp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def tiny_pipe():
    """The tiny FLUX pipeline, shared by the tests that only read it."""
    from lora_space.tiny import build_tiny_pipeline

    return build_tiny_pipeline()


@pytest.fixture
def settings(tmp_path: Path):
    """Settings in tiny mode with the library and data in a temp folder."""
    from lora_space.settings import Settings

    env = {
        "LORA_SPACE_BASE_MODEL": "tiny",
        "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"),
        "LORA_SPACE_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
    }
    return Settings.from_env(env)
