"""Shared fixtures: the tiny pipeline (built once) and settings pointing at temp folders."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def tiny_pipe():
    """The random tiny FLUX pipeline (`tiny-random`), shared by the tests that only read it."""
    from lora_space.tiny.model import build_tiny_pipeline

    return build_tiny_pipeline()


@pytest.fixture
def settings(tmp_path: Path):
    """Settings in tiny-random mode (the engines of tests are `build_tiny_pipeline()`) with the
    library and data in a temp folder."""
    from lora_space.core.settings import Settings

    env = {
        "LORA_SPACE_BASE_MODEL": "tiny-random",
        "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"),
        "LORA_SPACE_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
    }
    return Settings.from_env(env)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch):
    """The Hub stand-in (tests/hub_standin.py) on 127.0.0.1, reached through HF_ENDPOINT; a test
    module that needs users or repos in it overrides this fixture."""
    from tests.hub_standin import isolated_hub

    with isolated_hub(tmp_path, monkeypatch) as stand_in:
        yield stand_in


@pytest.fixture
def online_settings(settings, hub):
    """`settings` online, pointed at the `hub` stand-in."""
    return dataclasses.replace(settings, hf_endpoint=hub.endpoint, hf_offline=False)
