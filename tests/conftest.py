"""Shared fixtures: the tiny pipeline (built once), settings pointing at temp folders, the Hub
stand-in, and the one space factory (`make_space`, and `space` made with it).

The helpers the tests import (`tests.hub_standin`, `tests.lora_factory`, `tests.train_factory`,
`tests.app_process`, `tests.browser`, `tests.discover_repos`, `tests.zerogpu_checks`) live at the
top of `tests/`; the tests live in one folder per room of `lora_space/` (`tests/<room>/test_<module>.py`),
plus `tests/service/` (LoraSpace) and `tests/app/` (the whole app process). Every folder is a
package, so that `tests.<room>.test_x` names are unique and `import tests...` works from each."""

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


@pytest.fixture
def make_space(settings):
    """The one space factory: `make_space(space_settings=None, *, engine=True, cache_size=None,
    engine_class=None, chunk_steps=None, **replaced)` makes a LoraSpace on a fresh tiny engine.

    Args (of the factory):
        space_settings: the settings (default: the `settings` fixture's, offline in tiny mode).
        engine: False for a space without an engine (for calls that never generate).
        cache_size: the engine's LoRA cache size (default: the engine's).
        engine_class: an Engine subclass to build instead of Engine.
        chunk_steps: the training jobs' chunk size in steps (default: JobManager's).
        replaced: settings fields to replace (e.g. `on_space=True`).
    Returns (of the factory): the LoraSpace; its training jobs are closed after the test."""
    from lora_space.generate.engine import Engine
    from lora_space.service import LoraSpace
    from lora_space.tiny.model import build_tiny_pipeline

    made = []

    def make(space_settings=None, *, engine=True, cache_size=None, engine_class=None, chunk_steps=None, **replaced):
        chosen = dataclasses.replace(space_settings or settings, **replaced)
        pipeline_engine = None
        if engine:
            options = {} if cache_size is None else {"cache_size": cache_size}
            pipeline_engine = (engine_class or Engine)(build_tiny_pipeline(), **options)
        space = LoraSpace(chosen, pipeline_engine, **({} if chunk_steps is None else {"chunk_steps": chunk_steps}))
        made.append(space)
        return space

    yield make
    for space in made:
        space.jobs.close()


@pytest.fixture
def space(make_space):
    """A LoraSpace on a fresh tiny engine with the `settings` fixture's library and data folders."""
    return make_space()


@pytest.fixture(scope="module")
def red_zip(tmp_path_factory):
    """A dataset zip of six red images, captioned `redstyle, ...` (tests/train_factory.py's colour_zip)."""
    from tests.train_factory import colour_zip

    return colour_zip(tmp_path_factory.mktemp("zips") / "red.zip")
