"""Training bounds (issue 14, second pass): a rank the base cannot hold is refused at job start and by
the trainer, and a job that finishes over its visitor's quota is done with its LoRA kept and the fix said.
(Jobs and previews that age out: tests/visitors/test_cleanup.py; Discover's id checks:
tests/discover/test_discover_ids.py.)"""

from __future__ import annotations

import dataclasses

import pytest

from lora_space.core.errors import TrainConfigError
from lora_space.core.settings import Storage
from lora_space.service import LoraSpace
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.train.steps import rank_bound
from lora_space.train.trainer import run_chunk
from lora_space.ui.api.train import status_dict
from tests.train_factory import ALICE, RUN, job_folder, wait_for_job


@pytest.fixture
def space(make_space) -> LoraSpace:
    return make_space(chunk_steps=4)  # training jobs in chunks of 4 steps


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


