"""Hardening (issue 14, hole 3): bounds that no visitor identity resets.

A new `gradio_client.Client` is a new visitor with its own turns and quota, so the disk and the
calls in flight also have global bounds: the client address (tests/visitors/test_fairness.py), a
write budget per hour, a free-disk floor, size bounds on outputs and the Hub cache (least
recently used first, never the shared library), and a quota that counts a visitor's jobs and
previews. The running-app checks (three fresh sessions from one address) are in
`tests/app/test_limits.py`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from types import SimpleNamespace

import pytest
from safetensors.torch import save_file
from starlette.datastructures import Headers

from lora_space.core.errors import LimitError
from lora_space.core.settings import Settings
from lora_space.generate.engine import Engine
from lora_space.generate.request import Options
from lora_space.library.sources import resolve_source
from lora_space.service import LoraSpace
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.visitors import cleanup, disk
from lora_space.visitors.owners import Visitor
from tests.hub_standin import isolated_hub
from tests.lora_factory import lora_tensors, write_lora
from tests.train_factory import RUN, colour_zip

MB = 2**20
TINY = Options(seed=1, steps=1, width=64, height=64)


def space_settings(tmp_path, **env: str) -> Settings:
    """Settings as on a Space (`SPACE_ID` set), with the library and data under `tmp_path` and `env` on top."""
    base = {"LORA_SPACE_BASE_MODEL": "tiny-random", "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"),
            "LORA_SPACE_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1", "SPACE_ID": "someone/space"}  # fmt: skip
    return Settings.from_env(base | env)


def request(peer: str, *forwarded: str):
    """What gradio hands a handler: the TCP peer and the X-Forwarded-For lines as received."""
    raw = [(b"x-forwarded-for", line.encode()) for line in forwarded]
    return SimpleNamespace(headers=Headers(raw=raw), client=SimpleNamespace(host=peer), session_hash="s")


def test_settings_read_the_new_bounds(tmp_path):
    read = space_settings(tmp_path, LORA_SPACE_ADDRESS_REQUESTS="3", LORA_SPACE_WRITE_MB_PER_HOUR="5", LORA_SPACE_MIN_FREE_MB="7",
                          LORA_SPACE_OUTPUTS_MB="9", LORA_SPACE_HUB_CACHE_MB="11", LORA_SPACE_PROXY_HOPS="2")  # fmt: skip
    assert read.limits.max_requests_per_address == 3 and read.proxy_hops == 2
    storage = read.storage
    assert (storage.write_bytes_per_hour, storage.min_free_bytes, storage.outputs_bytes, storage.hub_cache_bytes) == (5 * MB, 7 * MB, 9 * MB, 11 * MB)
    assert space_settings(tmp_path).proxy_hops == 1 and Settings.from_env({"LORA_SPACE_BASE_MODEL": "tiny"}, check=False).proxy_hops == 0


# -- the write budget and the disk floor ------------------------------------------------------------

DOUBLE = ("norm1.linear", "norm1_context.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj",
          "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
SINGLE = ("norm.linear", "proj_mlp", "proj_out", "attn.to_q", "attn.to_k", "attn.to_v")


def full_lora(path, seed: int):
    """A rank-32 LoRA on every block module of tiny: about 0.6 MB, as the issue's baked blends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doubles = lora_tensors(seed, rank=32, blocks=("transformer_blocks.0", "transformer_blocks.1"), suffixes=DOUBLE)
    singles = lora_tensors(seed + 100, rank=32, blocks=("single_transformer_blocks.0", "single_transformer_blocks.1"), suffixes=SINGLE)
    save_file(doubles | singles, str(path))
    return path


@pytest.fixture
def engine():
    return Engine(build_tiny_pipeline())


def test_the_write_budget_is_global_and_a_refusal_says_when_to_come_back(tmp_path, engine):
    """The issue's case: three fresh clients baked 1.77 MB into a 1 MB quota. Fresh visitors now share one budget."""
    for seed, name in enumerate(["ink", "neon", "film"]):
        full_lora(tmp_path / "loras" / f"{name}.safetensors", seed)
    settings = space_settings(tmp_path, LORA_SPACE_VISITOR_QUOTA_MB="1", LORA_SPACE_WRITE_MB_PER_HOUR="2")
    space = LoraSpace(settings, engine)
    blend = [{"source": "ink", "strength": 0.8}, {"source": "neon", "strength": 0.6}, {"source": "film", "strength": 0.4}]
    baked, refusals = [], []
    for index in range(3):  # three fresh visitors, each with a quota of its own
        try:
            baked.append(space.bake(blend, visitor=Visitor("session", f"fresh{index}"), name=f"mix{index}"))
        except LimitError as error:
            refusals.append(str(error))
    assert len(baked) == 1 and len(refusals) == 2, refusals  # each bake writes ~1.2 MB (its file and the library's copy)
    assert "in the last hour" in refusals[-1] and "Come back in about" in refusals[-1] and "UTC" in refusals[-1]
    written = sum(size for _, size in disk._recent_writes(settings, time.time()))
    assert 1 * MB < written <= 2 * MB  # nothing of the refused bakes was written
    assert not list((settings.data_dir / "visitors").glob("*/loras/mix[12]*"))
    # An hour later the budget is back.
    disk.check_write(settings, now=time.time() + 3601)


def test_the_budget_comes_back_as_old_writes_leave_the_hour(tmp_path):
    settings = space_settings(tmp_path, LORA_SPACE_WRITE_MB_PER_HOUR="1")
    start = 1_000_000.0
    disk.record_write(settings, 600 * 1024, now=start)
    disk.record_write(settings, 500 * 1024, now=start + 600)
    with pytest.raises(LimitError, match="Come back in about 40 minutes"):
        disk.check_write(settings, now=start + 1200)
    disk.check_write(settings, now=start + 3601)  # the first write left the hour
    with pytest.raises(LimitError, match="Come back in about 20 minutes"):  # 600 KB more fit once both writes left the hour
        disk.check_write(settings, 600 * 1024, now=start + 3000)
    disk.check_write(dataclasses.replace(settings, on_space=False), 10 * MB, now=start + 1200)  # a local run has no budget


def test_the_disk_floor_refuses_a_write_before_anything_is_written(tmp_path, engine):
    floor_mb = (disk.free_bytes(tmp_path) + 1024**3) // MB  # more than this disk has free
    settings = space_settings(tmp_path, LORA_SPACE_MIN_FREE_MB=str(floor_mb))
    space = LoraSpace(settings, engine)
    alice = Visitor("session", "a" * 32)
    with pytest.raises(LimitError, match="disk is nearly full"):
        space.generate("a cat", [], TINY, visitor=alice)
    with pytest.raises(LimitError, match="disk is nearly full"):
        space.add_lora(write_lora(tmp_path / "upload" / "mine.safetensors", 3), visitor=alice)
    with pytest.raises(LimitError, match="disk is nearly full"):
        space.preview_dataset(colour_zip(tmp_path / "red.zip"), visitor=alice)
    written = [path for path in (tmp_path / "data").rglob("*") if path.is_file() and path.name != ".visitor_secret"]
    assert written == []


# -- a visitor's jobs and previews count against their quota ----------------------------------------


def test_a_visitors_previews_and_jobs_count_against_their_quota(tmp_path, engine):
    settings = space_settings(tmp_path)
    space = LoraSpace(settings, engine)
    alice, bob, carol = (Visitor("session", letter * 32) for letter in "abc")
    zip_path, big = colour_zip(tmp_path / "red.zip", count=6, size=128), colour_zip(tmp_path / "big.zip", count=12, size=256)
    preview, _ = space.preview_dataset(zip_path, visitor=alice)
    held = cleanup.visitor_usage(settings, alice)
    assert held > 50_000 and cleanup.visitor_usage(settings, bob) == 0  # the preview is alice's
    status = space.start_training(None, RUN | {"max_train_steps": 1}, visitor=alice, preview=preview)
    space.jobs.cancel(status.job_id)
    assert cleanup.visitor_usage(settings, alice) >= held  # the preview became the job's dataset, still hers
    # A zip whose images do not fit in what alice has left is refused while it is read, and leaves nothing.
    space.preview_dataset(big, visitor=carol)
    big_size = cleanup.visitor_usage(settings, carol)
    quota = cleanup.visitor_usage(settings, alice) + big_size // 2
    space.settings = dataclasses.replace(settings, storage=dataclasses.replace(settings.storage, visitor_quota_bytes=quota))
    with pytest.raises(LimitError, match="room left for your files"):
        space.preview_dataset(big, visitor=alice)
    assert not any((cleanup.preview_root(settings) / alice.id).glob("*/images/*"))
    space.preview_dataset(zip_path, visitor=bob)  # bob's quota is his own
    space.jobs.close()


# -- outputs and the Hub cache, least recently used first ---------------------------------------------


def test_outputs_are_evicted_least_recently_used_first_down_to_their_bound(tmp_path):
    settings = space_settings(tmp_path, LORA_SPACE_OUTPUTS_MB="1")
    outputs = settings.data_dir / "outputs"
    folders = []
    for index in range(4):  # 4 x 400 KB, used in this order
        folder = outputs / f"{index:032x}"
        folder.mkdir(parents=True)
        (folder / "image.png").write_bytes(b"x" * 400 * 1024)
        moment = time.time() - 3600 + index * 60
        os.utime(folder / "image.png", (moment, moment))
        folders.append(folder)
    report = cleanup.clean(settings)
    assert [folder.exists() for folder in folders] == [False, False, True, True]
    assert sum(f"outputs/{folder.name}" in report.removed for folder in folders) == 2


def test_the_hub_cache_is_evicted_least_recently_used_first_and_the_library_never(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as hub:
        files = {}
        for seed, repo in enumerate(["alice/one", "alice/two", "alice/three"]):
            files[repo] = full_lora(tmp_path / "made" / f"{seed}.safetensors", seed)
            hub.add_model(repo, files={"lora.safetensors": files[repo]})
        size = files["alice/one"].stat().st_size
        shared = full_lora(tmp_path / "loras" / "shared.safetensors", 9)
        settings = space_settings(tmp_path)
        storage = dataclasses.replace(settings.storage, hub_cache_bytes=int(size * 2.5))  # room for two of the three
        settings = dataclasses.replace(settings, hf_endpoint=hub.endpoint, hf_offline=False, storage=storage)
        one = resolve_source("alice/one", settings=settings).file
        two = resolve_source("alice/two", settings=settings).file
        later = time.time() + 60
        for path in one.parent.parent.parent.rglob("*"):  # alice/one is used again: alice/two is now the least recently used
            os.utime(path, (later, later), follow_symlinks=False)
        three = resolve_source("alice/three", settings=settings).file
        assert one.exists() and three.exists() and not two.exists()
        assert shared.exists() and shared.read_bytes() and files["alice/two"].exists()
        assert resolve_source("alice/two", settings=settings).file.exists()  # it comes back on the next use
