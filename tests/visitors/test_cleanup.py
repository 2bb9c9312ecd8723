"""Hardening (hole 3): disk stays bounded: ages, quotas, upload size, resize output, Gradio's cache."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import pytest
from safetensors.torch import load_file, save_file

from lora_space.core.errors import LimitError, LoraFileError
from lora_space.core.settings import Settings, Storage
from lora_space.generate.engine import Engine
from lora_space.generate.request import Options
from lora_space.library.tools import optimize_source
from lora_space.service import LoraSpace
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.train.checkpoint import write_json
from lora_space.visitors import cleanup
from lora_space.visitors.owners import LOCAL, Visitor, visitor_area
from tests.lora_factory import write_lora
from tests.train_factory import ALICE as BROWSER_ALICE

DAY = 24 * 3600
ALICE = Visitor("hub", "alice")


def age(path, seconds: float) -> None:
    """Make `path` and everything below it look `seconds` old."""
    moment = time.time() - seconds
    for root, folders, files in os.walk(path):
        for name in files + folders:
            os.utime(os.path.join(root, name), (moment, moment), follow_symlinks=False)
    os.utime(path, (moment, moment))


def test_the_cleaner_removes_aged_outputs_and_visitor_files_only(space, settings, monkeypatch, tmp_path):
    from huggingface_hub import constants

    hub_cache = settings.data_dir / "hf-cache"  # a Space often keeps its Hub cache on /data
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    write_lora(hub_cache / "models--a--b" / "snapshots" / "c" / "x.safetensors", 1)
    shared = write_lora(settings.lora_dir / "shared.safetensors", 2)
    old_output = space.generate("a cat", [], Options(seed=1, steps=1, width=64, height=64)).files[0].parent
    new_output = space.generate("a dog", [], Options(seed=1, steps=1, width=64, height=64)).files[0].parent
    area = visitor_area(settings.data_dir, ALICE)
    old_lora = write_lora(area / "loras" / "old.safetensors", 3)
    (area / "loras" / "old.txt").write_text("oldword")
    new_lora = write_lora(area / "loras" / "new.safetensors", 4)
    for path in (old_output, hub_cache, shared, old_lora, area / "loras" / "old.txt"):
        age(path, 30 * DAY)
    age(settings.lora_dir, 30 * DAY)
    report = cleanup.clean(settings)
    assert not old_output.exists() and new_output.exists()
    assert not old_lora.exists() and not (area / "loras" / "old.txt").exists() and new_lora.exists()
    assert shared.exists() and (hub_cache / "models--a--b" / "snapshots" / "c" / "x.safetensors").exists()
    assert report.freed_bytes > 0 and all(not item.startswith(("hf-cache", "..")) for item in report.removed)


def test_a_visitor_has_a_quota_and_uploads_a_size_limit(space, settings, tmp_path):
    upload = write_lora(tmp_path / "mine.safetensors", 5)
    size = upload.stat().st_size
    space.settings = dataclasses.replace(settings, storage=Storage(visitor_quota_bytes=int(size * 1.5), max_upload_bytes=size * 10))
    space.add_lora(upload, visitor=ALICE)
    with pytest.raises(LimitError, match="would pass it"):
        space.add_lora(upload, visitor=ALICE, name="again")
    assert not (visitor_area(settings.data_dir, ALICE) / "loras" / "again.safetensors").exists()
    space.settings = dataclasses.replace(settings, storage=Storage(max_upload_bytes=size - 1))
    with pytest.raises(LimitError, match="more than the"):
        space.add_lora(upload, visitor=LOCAL, name="too_big")
    assert not (settings.lora_dir / "too_big.safetensors").exists()


def test_resize_to_fp32_past_the_size_limit_writes_nothing(settings, tmp_path):
    lora = write_lora(tmp_path / "f32.safetensors", 6)
    half = {key: value.bfloat16() for key, value in load_file(lora).items()}
    settings.lora_dir.mkdir(parents=True, exist_ok=True)
    save_file(half, str(settings.lora_dir / "half.safetensors"))
    size = sum(tensor.numel() * 2 for tensor in half.values())  # its tensor bytes in bf16; fp32 doubles them
    small = dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, max_lora_bytes=int(size * 1.5)))
    outputs = settings.data_dir / "outputs"
    before = set(outputs.iterdir()) if outputs.exists() else set()
    with pytest.raises(LoraFileError, match="keep a 16-bit dtype"):
        optimize_source("half", settings=small, dtype="fp32")
    after = set(outputs.iterdir()) if outputs.exists() else set()
    assert after == before
    path, _ = optimize_source("half", settings=small, dtype="keep", rank=2)  # a smaller result is fine
    assert path.is_file()


def test_settings_and_the_app_wire_the_bounds(settings):
    env = {"LORA_SPACE_BASE_MODEL": "tiny", "LORA_SPACE_LORA_DIR": str(settings.lora_dir), "LORA_SPACE_DATA_DIR": str(settings.data_dir),
           "LORA_SPACE_MAX_UPLOAD_MB": "10", "LORA_SPACE_VISITOR_QUOTA_MB": "20", "LORA_SPACE_VISITOR_DAYS": "2",
           "LORA_SPACE_OUTPUT_HOURS": "3", "LORA_SPACE_CLEAN_MINUTES": "5", "LORA_SPACE_QUEUE_SIZE": "7", "LORA_SPACE_MAX_WORK": "50"}
    read = Settings.from_env(env)
    assert read.storage == Storage(10 * 2**20, 20 * 2**20, 2 * DAY, 3 * 3600, 300)
    assert read.limits.queue_size == 7 and read.limits.max_work == 50
    assert cleanup.gradio_delete_cache(read) == (300, 3 * 3600)
    from lora_space.ui.app import build_demo

    demo = build_demo(LoraSpace(read, Engine(build_tiny_pipeline())))
    assert demo.delete_cache == (300, 3 * 3600)


# --------------------------------------------------------------------------------------------------
# Jobs and dataset previews that never aged out (a browser visitor's).

# -- c. jobs and previews age out --------------------------------------------------------------


def make_job(root, state: str, days_old: float):
    folder = root / f"{state}{int(days_old)}".ljust(32, "0")
    folder.mkdir(parents=True)
    write_json(folder / "job.json", {"job_id": folder.name, "state": state, "owner": BROWSER_ALICE.id})
    (folder / "final.safetensors").write_bytes(b"x" * 100)
    age(folder, days_old * DAY)
    return folder


@pytest.mark.parametrize("on_space", [True, False])
def test_aged_finished_jobs_are_cleaned_on_a_space_and_never_active_ones_nor_a_local_runs(tmp_path, on_space):
    env = {"LORA_SPACE_BASE_MODEL": "tiny", "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"), "LORA_SPACE_DATA_DIR": str(tmp_path / "data")}
    settings = Settings.from_env(env | ({"SPACE_ID": "someone/space"} if on_space else {}))
    jobs = settings.data_dir / "jobs"
    old = {state: make_job(jobs, state, 30) for state in ("done", "cancelled", "failed", "queued", "running", "interrupted")}
    fresh = make_job(jobs, "done", 1)
    report = cleanup.clean(settings)
    gone = {state for state, folder in old.items() if not folder.exists()}
    assert gone == ({"done", "cancelled", "failed"} if on_space else set())
    assert fresh.exists()
    if on_space:
        assert sorted(report.removed) == sorted(f"jobs/{old[state].name}" for state in gone) and report.freed_bytes >= 300


def test_aged_dataset_previews_are_cleaned(settings, tmp_path, monkeypatch):
    root = cleanup.preview_root(settings)
    assert root == settings.data_dir / "previews"
    old = root / BROWSER_ALICE.id / "0123abcd"
    (old / "images").mkdir(parents=True)
    (old / "images" / "a.png").write_bytes(b"png")
    fresh = root / ("b" * 32) / "4567ef01"
    fresh.mkdir(parents=True)
    (fresh / "a.png").write_bytes(b"png")
    age(old, 2 * DAY)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # previews earlier versions left in the temp folder go
    legacy = tmp_path / "tmp" / "lora-space-previews" / BROWSER_ALICE.id / "0123abcd"
    legacy.mkdir(parents=True)
    age(legacy, 2 * DAY)
    report = cleanup.clean(settings)
    assert not old.exists() and not (root / BROWSER_ALICE.id).exists() and fresh.exists()
    assert f"previews/{BROWSER_ALICE.id}/0123abcd" in report.removed
    assert not legacy.exists()


