"""Hardening: probing the server through LoRA sources (hole 10) and pinned Hub reads (hole 9).

Every path outside what the caller may read gets the same answer as a path that does not
exist; `~` is never expanded; library symlinks do not lead out of the library; Hub names are
checked before any request; no message, listing or PNG names a server path.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from PIL import Image

from lora_space.core.errors import HubError, LoraFileError
from lora_space.generate.engine import Engine
from lora_space.generate.recipe import read_png_recipe
from lora_space.generate.request import Options
from lora_space.library import store as library
from lora_space.library.inspect import inspect_source
from lora_space.library.sources import resolve_source
from lora_space.service import LoraSpace
from lora_space.tiny.model import build_tiny_pipeline
from tests.lora_factory import write_lora

TINY = Options(seed=5, steps=2, width=64, height=64)


def answer(call) -> str:
    with pytest.raises(LoraFileError) as caught:
        call()
    return str(caught.value)


@pytest.mark.parametrize("pair", [("/etc/passwd", "/etc/nope"), ("/etc/hostname.safetensors", "/etc/nope.safetensors"), ("~root/.bashrc", "~nosuchuser/x"), ("../../../../etc/passwd", "../../../../etc/nope")])
def test_outside_paths_get_the_same_answer_as_missing_ones(settings, pair):
    existing, missing = pair
    for call in (inspect_source, resolve_source):
        first = answer(lambda: call(existing, settings=settings)).replace(existing, "X")
        second = answer(lambda: call(missing, settings=settings)).replace(missing, "X")
        assert first == second
        assert str(settings.lora_dir) not in first and str(settings.data_dir) not in first


def test_tilde_is_never_expanded(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(settings.lora_dir))
    write_lora(settings.lora_dir / "mine.safetensors", 1)
    with pytest.raises(LoraFileError, match="No LoRA named '~/mine.safetensors'"):
        resolve_source("~/mine.safetensors", settings=settings)


def test_library_symlinks_do_not_lead_out_of_the_library(settings, tmp_path):
    outside = write_lora(tmp_path / "elsewhere" / "secret.safetensors", 2)
    settings.lora_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, settings.lora_dir / "link.safetensors")
    os.symlink(outside.parent, settings.lora_dir / "linked_folder")
    write_lora(settings.lora_dir / "real.safetensors", 3)
    os.symlink(settings.lora_dir / "real.safetensors", settings.lora_dir / "alias.safetensors")  # inside: fine
    names = {entry.name for entry in library.scan_library(settings.lora_dir)}
    assert "link" not in names and "secret" not in names and {"real", "alias"} <= names
    for source in ("link", "link.safetensors", str(settings.lora_dir / "link.safetensors"), str(settings.lora_dir / "linked_folder" / "secret.safetensors")):
        with pytest.raises(LoraFileError, match="No LoRA named"):
            resolve_source(source, settings=settings)
    with pytest.raises(HubError):  # not a file here, so it can only be a Hub id (offline here)
        resolve_source("linked_folder/secret.safetensors", settings=settings)


def test_messages_listing_and_png_name_no_server_path(settings, tmp_path):
    (settings.lora_dir / "sub").mkdir(parents=True)
    (settings.lora_dir / "sub" / "bad.safetensors").write_bytes(b"\x80\x04junk")
    (settings.lora_dir / "sub" / "bad.json").write_text("[" * 100_000)
    lora = write_lora(settings.data_dir / "jobs" / "j1" / "out.safetensors", 4)
    problems = [entry.problem for entry in library.scan_library(settings.lora_dir) if entry.problem]
    assert problems and not any(str(tmp_path) in problem for problem in problems)
    space = LoraSpace(settings, Engine(build_tiny_pipeline()))
    output = space.generate("a cat", [{"source": str(lora), "strength": 0.5}], TINY)
    recipe_text = str(read_png_recipe(output.files[0])) + str(output.metadata)
    assert str(tmp_path) not in recipe_text
    assert output.metadata["loras"][0]["source"] == "jobs/j1/out.safetensors"
    # the name in the recipe loads the same file again
    again = space.generate("a cat", [{"source": "jobs/j1/out.safetensors", "strength": 0.5}], TINY)
    assert again.metadata["loras"][0]["source"] == "jobs/j1/out.safetensors"


# -- hole 9: one revision for the size check, the file list and the download -----------------------


def test_a_hub_lora_is_read_at_one_commit_and_the_download_has_its_own_cap(settings, hub, tmp_path):
    settings = dataclasses.replace(settings, hf_endpoint=hub.endpoint, hf_offline=False)
    small = write_lora(tmp_path / "small.safetensors", 1)
    hub.add_model("alice/style", files={"style.safetensors": small})
    hub.reset_log()
    resolved = resolve_source("alice/style", settings=settings)
    commit = hub._repos["alice/style"].head.oid
    assert resolved.revision == commit
    reads = [request for request in hub.requests if "/resolve/" in request.path or "/tree/" in request.path or "/revision/" in request.path]
    assert reads and all(commit in request.path for request in reads), [request.path for request in reads]
    # a download measured above the cap is refused even when the header read let it through
    from lora_space.hub.client import HubClient

    big = write_lora(tmp_path / "big.safetensors", 2, rank=64)
    hub.add_model("bob/big", files={"big.safetensors": big})
    with pytest.raises(LoraFileError, match="above the"):
        HubClient(hub.endpoint).download("bob/big", "big.safetensors", max_bytes=big.stat().st_size - 1)
    assert hub.bytes_served("big.safetensors") == 0


def test_a_local_base_model_is_named_by_its_folder_in_images(settings, tmp_path):
    folder = tmp_path / "models" / "my-flux"
    folder.mkdir(parents=True)
    space = LoraSpace(dataclasses.replace(settings, base_model=str(folder)), Engine(build_tiny_pipeline()))
    output = space.generate("a cat", [], TINY)
    assert output.metadata["base_model"] == "my-flux"
    assert read_png_recipe(output.files[0])["model"] == "my-flux"
    assert str(tmp_path) not in str(Image.open(output.files[0]).info)


def test_a_forged_hub_file_is_refused_from_its_header_before_any_download(settings, hub, tmp_path):
    from tests.lora.test_safefile_hostile import tall_rank_file

    settings = dataclasses.replace(settings, hf_endpoint=hub.endpoint, hf_offline=False)
    hub.add_model("eve/tall", files={"tall.safetensors": tall_rank_file(tmp_path / "tall.safetensors", 6000)})
    hub.reset_log()
    with pytest.raises(LoraFileError, match="rank 6000"):
        resolve_source("eve/tall", settings=settings)
    assert all(request.range for request in hub.requests if "/resolve/" in request.path)  # header reads only
