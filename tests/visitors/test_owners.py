"""Who owns what (API.md): on a Space a visitor's LoRAs are theirs alone; the shared library is read-only."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import gradio as gr
import pytest

from lora_space.core.errors import LoraFileError
from lora_space.generate.request import Options
from lora_space.library.inspect import inspect_source
from lora_space.library.sources import resolve_source
from lora_space.service import LoraSpace
from lora_space.ui.caller import caller_of, fill_browser_id, visitor_of
from lora_space.visitors.owners import (
    LOCAL,
    Visitor,
    browser_secret,
    new_browser_id,
    visitor_area,
)
from tests.lora_factory import write_lora

ALICE = Visitor("browser", "a" * 32)
BOB = Visitor("hub", "bob")


@pytest.fixture
def space_settings(settings):
    """Settings as on a Space (SPACE_ID set), with `detailed_eyes` in the shared library."""
    write_lora(settings.lora_dir / "detailed_eyes.safetensors", 1)
    return replace(settings, on_space=True)


@pytest.fixture
def space(space_settings, make_space):
    return make_space(space_settings, engine=False)  # these tests never generate


def test_visitor_ids_are_stable_hashes_and_never_the_name() -> None:
    assert Visitor("hub", "bob").id == Visitor("hub", "bob").id
    assert Visitor("hub", "bob").id != Visitor("session", "bob").id
    assert len(ALICE.id) == 32 and "bob" not in BOB.id
    with pytest.raises(ValueError):
        Visitor("hub", "")
    with pytest.raises(ValueError):
        Visitor("admin", "x")


def test_an_upload_belongs_to_its_visitor_on_a_space(space, space_settings, tmp_path) -> None:
    upload = tmp_path / "upload" / "my_style.safetensors"
    write_lora(upload, 2)
    entry = space.add_lora(upload, visitor=ALICE, trigger_words=["mystl"])
    # 1. It went to Alice's area, not the shared library.
    assert entry.path.is_relative_to(visitor_area(space_settings.data_dir, ALICE))
    assert not (space_settings.lora_dir / "my_style.safetensors").exists()
    # 2. Alice lists and uses it by name; Bob sees only the shared library and cannot use it.
    alice_names = {item["name"]: item["owner"] for item in space.list_loras(ALICE)}
    assert alice_names == {"detailed_eyes": "shared", "my_style": "you"}
    assert {item["name"] for item in space.list_loras(BOB)} == {"detailed_eyes"}
    assert resolve_source("my_style", settings=space_settings, visitor=ALICE).trigger_words == ["mystl"]
    with pytest.raises(LoraFileError, match="No LoRA named 'my_style'"):
        resolve_source("my_style", settings=space_settings, visitor=BOB)
    with pytest.raises(LoraFileError, match="No LoRA named 'my_style'"):
        inspect_source("my_style", settings=space_settings, visitor=BOB)
    # 3. Nor can Bob reach it by its path.
    with pytest.raises(LoraFileError, match="No LoRA named"):
        resolve_source(str(entry.path), settings=space_settings, visitor=BOB)
    assert resolve_source(str(entry.path), settings=space_settings, visitor=ALICE).file == entry.path


def test_a_visitor_cannot_shadow_a_shared_name(space, space_settings, tmp_path) -> None:
    upload = tmp_path / "detailed_eyes.safetensors"
    write_lora(upload, 3)
    with pytest.raises(LoraFileError, match="shared library already has a LoRA named 'detailed_eyes'"):
        space.add_lora(upload, visitor=ALICE, trigger_words=["evil trigger"])
    with pytest.raises(LoraFileError, match="shared library already has"):
        space.add_lora(upload, visitor=ALICE, name="detailed_eyes.safetensors")
    # Every visitor still gets the shared file and its trigger words.
    shared = resolve_source("detailed_eyes", settings=space_settings, visitor=BOB)
    assert shared.file == space_settings.lora_dir / "detailed_eyes.safetensors"
    assert not list(space_settings.data_dir.rglob("*.safetensors"))


def test_a_local_run_adds_to_the_shared_library(settings, tmp_path) -> None:
    upload = tmp_path / "wtrclr.safetensors"
    write_lora(upload, 4)
    entry = LoraSpace(settings, engine=None).add_lora(upload, visitor=LOCAL, trigger_words=["wtrclr"])
    assert entry.path == (settings.lora_dir / "wtrclr.safetensors").resolve()
    assert entry.trigger_words == ("wtrclr",)


def test_visitor_of_follows_api_md(settings, space_settings) -> None:
    request = SimpleNamespace(session_hash="s3ss10n")
    profile = SimpleNamespace(username="carol")
    browser = new_browser_id()
    assert visitor_of(settings, request, profile, browser) == LOCAL  # off a Space: one user
    assert visitor_of(space_settings, request, profile, browser) == Visitor("hub", "carol")
    assert visitor_of(space_settings, request, None, browser) == Visitor("browser", browser)
    assert visitor_of(space_settings, request, None, None) == Visitor("session", "s3ss10n")  # an API call
    # A page event before the load event stored an id gets the id the load event stores: the page session's fresh one.
    fresh = new_browser_id()
    early = visitor_of(space_settings, request, None, "", fresh)
    assert early.kind == "browser" and early == visitor_of(space_settings, request, None, fill_browser_id("", fresh))
    assert visitor_of(space_settings, request, None, browser, fresh) == Visitor("browser", browser)  # a stored id wins
    one_off = visitor_of(space_settings, None, None, "")
    assert one_off.kind == "session" and one_off != visitor_of(space_settings, None, None, "")
    token = gr.OAuthToken(token="hf_secret", scope="", expires_at=0)
    assert caller_of(space_settings, request, None, browser, token).token == "hf_secret"


def test_browser_ids_survive_reloads_and_restarts(settings) -> None:
    kept = new_browser_id()
    assert fill_browser_id(kept, new_browser_id()) == kept
    fresh = new_browser_id()
    assert fill_browser_id("", fresh) == fresh and fill_browser_id("not-an-id", fresh) == fresh
    assert browser_secret(settings) == browser_secret(settings)  # read back from the data folder


# --------------------------------------------------------------------------------------------------
# Hardening (hole 5, ownership): on a Space one visitor's LoRAs never reach another's images.
HUB_ALICE, SESSION_BOB = Visitor("hub", "alice"), Visitor("session", "b" * 32)
TINY = Options(seed=2, steps=2, width=64, height=64)


def test_a_visitor_can_neither_shadow_a_shared_name_nor_reach_another_visitors_prompt(space_settings, make_space, tmp_path):
    (space_settings.lora_dir / "detailed_eyes.txt").write_text("sharpeyes")
    space = make_space(space_settings)  # with an engine: these tests generate
    claim = write_lora(tmp_path / "detailed_eyes.safetensors", 2)
    with pytest.raises(LoraFileError, match="shared library already has"):
        space.add_lora(claim, visitor=HUB_ALICE, trigger_words=["evilword"])
    mine = write_lora(tmp_path / "my_style.safetensors", 3)
    space.add_lora(mine, visitor=HUB_ALICE, trigger_words=["evilword"])
    assert not (space.settings.lora_dir / "my_style.safetensors").exists()  # the shared library is unchanged
    # Alice's LoRA works for Alice, with her trigger word.
    assert space.generate("a cat <lora:my_style:0.5>", [], TINY, visitor=HUB_ALICE).metadata["prompt"] == "evilword, a cat"
    # Bob cannot name it, and the shared name gives him the shared LoRA and its own trigger word.
    with pytest.raises(LoraFileError, match="No LoRA named 'my_style'"):
        space.generate("a cat <lora:my_style:0.5>", [], TINY, visitor=SESSION_BOB)
    output = space.generate("a cat <lora:detailed_eyes:0.5>", [], TINY, visitor=SESSION_BOB)
    assert output.metadata["prompt"] == "sharpeyes, a cat" and "evilword" not in str(output.metadata)
    assert {item["name"] for item in space.list_loras(SESSION_BOB)} == {"detailed_eyes"}
