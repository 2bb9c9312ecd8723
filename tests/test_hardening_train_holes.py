"""Hardening, second pass: holes left by the first: a rank the base cannot hold, a job that
finishes over quota, jobs and dataset previews that never aged out, Hub ids Discover sent as-is."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import pytest

from lora_space import cleanup
from lora_space.discover import Discover
from lora_space.engine import Engine
from lora_space.errors import LoraFileError, TrainConfigError
from lora_space.service import LoraSpace
from lora_space.settings import Settings, Storage
from lora_space.tiny import build_tiny_pipeline
from lora_space.train.checkpoint import write_json
from lora_space.train.jobs import JobManager
from lora_space.train.trainer import rank_bound, run_chunk
from lora_space.ui.train_api import status_dict
from tests.discover_repos import add_discover_repos
from tests.hub_standin import isolated_hub
from tests.train_factory import ALICE, RUN, job_folder, red_zip, wait_for_job  # noqa: F401 (red_zip: a fixture)

DAY = 24 * 3600


@pytest.fixture
def space(settings) -> LoraSpace:  # as train_factory's, with chunks of 4 steps
    space = LoraSpace(settings, Engine(build_tiny_pipeline()))
    space.jobs = JobManager(space, chunk_steps=4)
    yield space
    space.jobs.close()



def age(path, seconds: float) -> None:
    moment = time.time() - seconds
    for root, folders, files in os.walk(path):
        for name in files + folders:
            os.utime(os.path.join(root, name), (moment, moment), follow_symlinks=False)
    os.utime(path, (moment, moment))


# -- a. the rank bound of the base ------------------------------------------------------------


def test_a_rank_above_the_bases_module_width_is_refused_at_job_start(space, red_zip):
    assert rank_bound(space.engine.pipe.transformer) == 32  # tiny: every targeted Linear is at least 32 wide
    with pytest.raises(TrainConfigError, match=r"network_dim \(rank\) 33 is larger .*\(at most 32") as caught:
        space.jobs.start(red_zip, RUN | {"network_dim": 33, "network_alpha": 16}, visitor=ALICE)
    assert "set network_dim to 32 or less" in str(caught.value)
    assert not space.jobs.root.exists() or not any(space.jobs.root.iterdir())  # no job folder left behind
    # The bound itself trains.
    status = space.jobs.start(red_zip, RUN | {"network_dim": 32, "max_train_steps": 2}, visitor=ALICE)
    assert wait_for_job(space, status.job_id).state == "done"


def test_a_job_folder_with_too_large_a_rank_is_refused_by_the_trainer_before_any_adapter(tmp_path, red_zip):
    files = job_folder(tmp_path / "job", red_zip, network_dim=64, max_train_steps=2)
    pipe = build_tiny_pipeline()
    with pytest.raises(TrainConfigError, match="at most 32"):
        run_chunk(pipe, files.root, adapter_name="too_wide")
    assert not pipe.get_list_adapters() and not files.states.exists()


# -- b. a job that finishes over quota -----------------------------------------------------------


def test_a_job_finishing_over_quota_is_done_with_its_lora_kept_and_the_fix_said(space, settings, red_zip):
    space.settings = dataclasses.replace(settings, storage=Storage(visitor_quota_bytes=1))  # the library is full
    status = space.jobs.start(red_zip, RUN | {"max_train_steps": 3}, visitor=ALICE)
    done = wait_for_job(space, status.job_id)
    assert done.state == "done" and done.error == ""
    assert done.lora_name == "" and done.lora_file is not None and done.lora_file.exists()
    note = next(text for text in done.warnings if "could not join your library" in text)
    assert "MB" in note and "download it as lora_file" in note and "make room" in note
    assert str(settings.data_dir) not in note
    served = status_dict(space, status.job_id)["lora_file"]  # what /training_status hands a client
    assert served is not None and served.path == str(done.lora_file)
    assert not space.list_loras(visitor=ALICE)  # nothing was half-added


# -- c. jobs and previews age out --------------------------------------------------------------


def make_job(root, state: str, days_old: float):
    folder = root / f"{state}{int(days_old)}".ljust(32, "0")
    folder.mkdir(parents=True)
    write_json(folder / "job.json", {"job_id": folder.name, "state": state, "owner": ALICE.id})
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
    old = root / ALICE.id / "0123abcd"
    (old / "images").mkdir(parents=True)
    (old / "images" / "a.png").write_bytes(b"png")
    fresh = root / ("b" * 32) / "4567ef01"
    fresh.mkdir(parents=True)
    (fresh / "a.png").write_bytes(b"png")
    age(old, 2 * DAY)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # previews earlier versions left in the temp folder go
    legacy = tmp_path / "tmp" / "lora-space-previews" / ALICE.id / "0123abcd"
    legacy.mkdir(parents=True)
    age(legacy, 2 * DAY)
    report = cleanup.clean(settings)
    assert not old.exists() and not (root / ALICE.id).exists() and fresh.exists()
    assert f"previews/{ALICE.id}/0123abcd" in report.removed
    assert not legacy.exists()


# -- d. Discover checks Hub ids before any request ------------------------------------------------


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as stand_in:
        add_discover_repos(stand_in, tmp_path / "files")
        stand_in.reset_log()
        yield stand_in


@pytest.fixture
def discover(tmp_path, hub) -> Discover:
    return Discover(Settings.from_env({
        "LORA_SPACE_BASE_MODEL": "tiny", "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"),
        "LORA_SPACE_DATA_DIR": str(tmp_path / "data"), "HF_ENDPOINT": hub.endpoint,
    }))  # fmt: skip


@pytest.mark.parametrize("repo_id", ["/etc/passwd", "etc/passwd/", "/alice/watercolor-flux", "user/repo/../../x", "a b/c", "x/" + "y" * 200, "../api"])
def test_evaluate_refuses_a_bad_repo_id_before_any_request(discover, hub, repo_id):
    with pytest.raises(LoraFileError, match=r"repo_id .* is not a Hub repo id; write it as 'user/repo'"):
        discover.evaluate(repo_id)
    assert hub.requests == []


@pytest.mark.parametrize("base_model", ["../../api/whoami", "/etc/passwd", "a/b?c=d", "x/y/z", "bad id"])
def test_search_refuses_a_bad_base_model_before_any_request(discover, hub, base_model):
    with pytest.raises(LoraFileError, match=r"base_model .* is not a Hub repo id"):
        discover.search(base_model=base_model)
    assert hub.requests == []


def test_good_ids_still_reach_the_hub(discover, hub):
    assert discover.evaluate(" alice/watercolor-flux ").summary.repo_id == "alice/watercolor-flux"
    hub.reset_log()
    found = discover.search(base_model="black-forest-labs/FLUX.1-dev")
    assert "alice/watercolor-flux" in [item.repo_id for item in found]
    (search,) = [request for request in hub.requests if request.path == "/api/models"]
    assert "base_model:adapter:black-forest-labs/FLUX.1-dev" in search.query["filter"]
