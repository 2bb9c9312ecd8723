"""Hardening (issue 14, hole 4): a dataset zip costs what its bytes say, and is read once per job.

Every byte inflated counts against the zip's budget, also those of a member that then fails its
checksum; only stored and deflate members are read; the Train tab's preview is the job's
dataset, so neither *Start* nor a trigger word that differs from the zip's reads the zip again.
The same bomb against the running app is in `tests/app/test_limits.py`.
"""

from __future__ import annotations

import time
import zipfile

import pytest

from lora_space.core.errors import DatasetError
from lora_space.generate.engine import Engine
from lora_space.service import LoraSpace
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.train import dataset
from lora_space.train.archive import CHUNK, ReadStats, ZipLimits, read_members
from lora_space.train.dataset import ingest
from lora_space.visitors.owners import Visitor
from tests.train_factory import RUN, colour_zip, crc_bomb_zip, raw_zip


def test_a_crc_bomb_is_refused_in_seconds_with_every_inflated_byte_counted(tmp_path):
    bomb = crc_bomb_zip(tmp_path / "bomb.zip")  # 7 MB: 200 bzip2 + 40 deflate members of 64 MiB whose CRCs lie, 4,000 small ones
    limits = ZipLimits()
    stats, skipped, notes = ReadStats(), [], []
    with zipfile.ZipFile(bomb) as archive:
        assert list(read_members(archive, limits=limits, skipped=skipped, notes=notes, stats=stats)) == []
    # The damaged deflate members count in full: reading stops at the budget (before: 15 GiB inflated, 77 s).
    assert limits.max_total_bytes <= stats.inflated_bytes <= limits.max_total_bytes + CHUNK
    assert stats.members_read <= limits.max_total_bytes // limits.max_member_bytes + 1
    assert any("were not read" in note for note in notes)
    reasons = {item.file: item.reason for item in skipped}
    assert "only stored and deflate members are read" in reasons["images/b0000.png"] and "damaged" in reasons["images/d0000.png"]
    started = time.perf_counter()
    with pytest.raises(DatasetError, match="no usable image"):
        ingest(bomb, tmp_path / "dest")
    elapsed = time.perf_counter() - started
    print(f"CRC bomb: {stats.inflated_bytes / 2**30:.2f} GiB inflated (counted), refused by ingest in {elapsed:.1f} s")
    assert elapsed < 30


def test_small_damaged_members_count_too(tmp_path):
    """Each member fails its checksum in the same read that inflates it: counted by its declared size."""
    data = bytes(1000)
    members = [(f"images/{index}.png", zipfile.ZIP_STORED, data, len(data), 12345) for index in range(50)]
    stats, skipped = ReadStats(), []
    with zipfile.ZipFile(raw_zip(tmp_path / "small.zip", members)) as archive:
        list(read_members(archive, limits=ZipLimits(max_total_bytes=10_000), skipped=skipped, notes=[], stats=stats))
    assert stats.members_read == 10 and 10_000 <= stats.inflated_bytes <= 11_000  # not 50 x 1,000 counted as 0


@pytest.fixture
def reads(monkeypatch):
    """How many times a zip is read (`read_members` called) from here on."""
    count = [0]
    original = dataset.read_members

    def counting(*args, **kwargs):
        count[0] += 1
        yield from original(*args, **kwargs)

    monkeypatch.setattr(dataset, "read_members", counting)
    return count


def test_the_zip_is_read_once_per_job_from_the_preview_to_the_job(settings, tmp_path, reads):
    space = LoraSpace(settings, Engine(build_tiny_pipeline()))
    alice = Visitor("session", "a" * 32)
    zip_path = colour_zip(tmp_path / "red.zip", trigger="redstyle")
    preview, shown = space.preview_dataset(zip_path, visitor=alice)
    assert reads[0] == 1 and shown.report.images_used == 6
    # Start with a trigger word the zip's captions lack and another split: the preview is finished again, not re-read.
    status = space.start_training(zip_path, RUN | {"trigger_word": "bluestyle", "validation_split": 0.5, "max_train_steps": 1}, visitor=alice, preview=preview)
    assert reads[0] == 1
    report = status.dataset_report
    assert report["trigger_word"] == "bluestyle" and len(report["captions_missing_trigger"]) == 6 and report["validation_count"] == 3
    space.jobs.cancel(status.job_id)
    # From a script (the zip itself): one read for the job.
    bob = Visitor("session", "b" * 32)
    status = space.start_training(zip_path, RUN | {"trigger_word": "bluestyle", "max_train_steps": 1}, visitor=bob)
    assert reads[0] == 2 and status.dataset_report["images_used"] == 6
    space.jobs.cancel(status.job_id)
    space.jobs.close()
