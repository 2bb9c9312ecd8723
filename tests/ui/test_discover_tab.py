"""The Discover tab's handlers in process: the visitor's token reaches the Hub, slots fill, the library marks Hub LoRAs."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pytest

from lora_space.core.errors import LimitError, LoraFileError
from lora_space.core.settings import Settings
from lora_space.library.sources import unknown_names
from lora_space.ui.app import build_demo
from lora_space.ui.tabs.slots import (
    SLOTS,
    fill_next_slot,
    place_lora,
    placement_note,
    switch_others_off,
)
from tests.discover_repos import (  # noqa: F401 (a fixture)
    GATED_TOKEN,
    GATED_USER,
    add_discover_repos,
    add_wide_repo,
    instant_retries,
)
from tests.hub_standin import isolated_hub

EMPTY = [None, 0.8, True] * SLOTS


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as stand_in:
        add_discover_repos(stand_in, tmp_path / "files")
        yield stand_in


@pytest.fixture
def space(tmp_path, hub, tiny_pipe, make_space):
    return make_space(Settings.from_env({
        "LORA_SPACE_BASE_MODEL": "tiny-random",
        "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"),
        "LORA_SPACE_DATA_DIR": str(tmp_path / "data"),
        "HF_ENDPOINT": hub.endpoint,
    }))


def handler(demo: gr.Blocks, *output_ids: str):
    """The first event function whose outputs hold a component with each `elem_id` of `output_ids`."""
    for function in demo.fns.values():
        ids = {getattr(block, "elem_id", None) for block in function.outputs}
        if set(output_ids) <= ids:
            return function.fn
    raise AssertionError(f"no event writes to #{', #'.join(output_ids)}")


def token(value: str) -> gr.OAuthToken:
    return gr.OAuthToken(token=value, scope="openid profile read-repos", expires_at=int(time.time()) + 3600)


def no_progress(*args, **kwargs) -> None:
    return None


def test_fill_next_slot_takes_the_first_empty_slot():
    values = fill_next_slot(["watercolor", 0.7, True] + EMPTY[3:], "alice/repo/file.safetensors")
    assert values[:6] == ["watercolor", 0.7, True, "alice/repo/file.safetensors", 0.8, True]
    assert values[6:] == EMPTY[6:]
    again = fill_next_slot(values[:3] + ["alice/repo/file.safetensors", 1.3, False] + values[6:], "alice/repo/file.safetensors")
    assert again[3:6] == ["alice/repo/file.safetensors", 0.8, True]  # already there: switched on at 0.8, not doubled
    with pytest.raises(LimitError, match="All 6 LoRA slots are taken"):
        fill_next_slot([f"lora{i}" if i % 3 == 0 else 0.8 for i in range(3 * SLOTS)], "alice/repo/file.safetensors")


def test_a_placed_lora_says_where_it_went_and_the_others_can_be_switched_off():
    values = ["watercolor", 0.7, True, "neon", 1.0, True, "film", 0.5, False] + EMPTY[9:]
    placement = place_lora(values, "alice/repo/file.safetensors")
    assert placement.slot == 3 and placement.values[9:12] == ["alice/repo/file.safetensors", 0.8, True]
    assert placement.others_on == [(0, "watercolor"), (1, "neon")]  # "film" is off already
    note = placement_note(placement, ["wtrclr"])
    assert "LoRA slot 4 (the group *LoRA 3-6*, now open)" in note and "slot 1 (watercolor), slot 2 (neon)" in note
    *slots, note, button = switch_others_off("alice/repo/file.safetensors", *placement.values)
    assert [slots[index + 2] for index in range(0, 12, 3)] == [False, False, False, True]  # kept, but off
    assert slots[:2] == ["watercolor", 0.7] and "Only **alice/repo/file.safetensors** is on now" in note
    assert place_lora(EMPTY, "neon").others_on == [] and "Also on" not in placement_note(place_lora(EMPTY, "neon"))


def test_a_lora_for_another_base_is_refused_before_its_download_naming_the_repo(space, hub):
    wide = add_wide_repo(hub)
    demo = build_demo(space)
    opener = handler(demo, "discover-verdict")
    verdict, chosen, use_button, *_ = opener("", "", None, None, None, no_progress, wide)
    assert "Not compatible with tiny" in verdict and "**Use in Generate is off**" in verdict
    assert chosen is None and use_button.interactive is False
    hub.reset_log()
    for prompt, loras in (("a castle", [{"source": wide, "strength": 0.8}]), (f"a castle <lora:{wide}:0.8>", [])):
        with pytest.raises(LoraFileError, match=f"{wide} does not fit the base model tiny-random .*, so it was not downloaded"):
            space.generate(prompt, loras)  # what /generate calls: the slots and the prompt's tags alike
    with pytest.raises(LoraFileError, match=f"{wide}/pytorch_lora_weights.safetensors does not fit"):
        space.bake([{"source": f"{wide}/pytorch_lora_weights.safetensors", "strength": 1.0}])
    assert not [r for r in hub.requests if r.path.endswith(".safetensors") and r.method == "GET" and not r.range]


def test_a_gated_lora_opens_and_goes_into_a_slot_with_the_visitors_token(space, hub):
    demo = build_demo(space)
    opener, use = handler(demo, "discover-verdict"), handler(demo, "discover-use-status", "slot-note")
    # Opening needs the visitor's token: anonymously the card and header are refused.
    anonymous = opener("", "", None, None, None, no_progress, "dave/gated-lora")
    assert "gated: accept its licence on the Hub and log in" in anonymous[0]
    assert anonymous[1]["source"] == "dave/gated-lora/gated-lora.safetensors"
    verdict, chosen, _, _, card, inspection, report, _ = opener("", "", None, None, token(GATED_TOKEN), no_progress, "dave/gated-lora")
    assert "Compatible with tiny" in verdict and report["compatible"]
    assert "Fits `tiny" in inspection and "Trigger words: `gtd`" in inspection and "7.6 kB" in inspection  # the LoRA tools' summary, not raw JSON
    hub.reset_log()
    with pytest.raises(gr.Error, match="dave/gated-lora is gated"):  # Use without a login fails clearly ...
        use("", "", None, None, None, no_progress, chosen, "a castle", *EMPTY)
    status, prompt, *placed, tabs = use("", "", None, None, token(GATED_TOKEN), no_progress, chosen, "a castle", *EMPTY)
    slots, (_, note, _, _) = placed[: 3 * SLOTS], placed[3 * SLOTS :]
    assert slots[:3] == ["dave/gated-lora/gated-lora.safetensors", 0.8, True]  # ... and works with it
    assert prompt == "gtd, a castle" and "slot 1" in note and "trigger words gtd go into the prompt" in note
    assert status == ""  # the note is on Generate; nothing is left behind on Discover
    assert tabs.selected == "generate"  # the Generate tab opens
    downloads = [r for r in hub.requests if r.path.endswith("gated-lora.safetensors") and r.method == "GET" and not r.range]
    assert [(r.user, r.status) for r in downloads] == [(GATED_USER, 200)]  # anonymously refused at the size check
    # Downloaded once into the Hub cache: the library lists it, marked as a Hub LoRA.
    entries = {entry["name"]: entry for entry in space.list_loras()}
    cached = entries["dave/gated-lora/gated-lora.safetensors"]
    assert cached["location"] == "hub:dave/gated-lora/gated-lora.safetensors" and cached["cached_from_hub"]
    assert cached["format"] == "diffusers" and cached["owner"] == "hub cache"
    # Generating with it reads the cached file: no second download of its bytes.
    hub.reset_log()
    generate = handler(demo, "gallery", "generate-warnings")
    generate("", "", None, None, token(GATED_TOKEN), no_progress, "a castle", "", 1, 1, 3.5, "64x64 tiny", 1, 1, *slots)
    assert not [r for r in hub.requests if r.path.endswith("gated-lora.safetensors") and r.method == "GET" and not r.range]


def test_search_handler_shows_results_and_hub_errors_as_messages(space, hub, instant_retries):
    demo = build_demo(space)
    search = handler(demo, "discover-results")
    results, status, *_ = search("", "", None, None, None, no_progress, "", "downloads", 1)
    assert [item["repo_id"] for item in results][:2] == ["alice/watercolor-flux", "dave/gated-lora"]
    assert "6 LoRAs on page 1, sorted by downloads" in status
    hub.outage = 429
    with pytest.raises(gr.Error, match="rate-limiting"):
        search("", "", None, None, None, no_progress, "water", "likes", 1)


def test_no_login_button_off_a_space(space):
    demo = build_demo(space)
    assert not any(isinstance(block, gr.LoginButton) for block in demo.blocks.values())


def test_a_login_button_in_the_header_on_a_space(space, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("SYSTEM", "spaces")  # what a Space sets: gradio then adds the real OAuth routes, no whoami()
    monkeypatch.setenv("SPACE_ID", "alice/lora-space")
    from gradio import (
        oauth,  # the variables a Space with `hf_oauth: true` gets (read by gradio at import)
    )

    for name, value in {"OAUTH_CLIENT_ID": "client-id", "OAUTH_CLIENT_SECRET": "client-secret",
                        "OAUTH_SCOPES": "openid profile read-repos", "OPENID_PROVIDER_URL": "https://huggingface.co"}.items():
        monkeypatch.setattr(oauth, name, value)
    space.settings = replace(space.settings, on_space=True)
    demo = build_demo(space)
    assert sum(isinstance(block, gr.LoginButton) for block in demo.blocks.values()) == 1


def test_hub_text_in_the_verdict_shows_as_text():
    from markdown_it import MarkdownIt

    from lora_space.core.markdown_text import md_text

    hostile = "![t](https://evil.example/t.png) [x](javascript:alert(1)) <img src=x onerror=alert(1)> `code` **bold**"
    page = MarkdownIt("commonmark").render(md_text(hostile))
    assert "<img" not in page and "<a" not in page and "<code" not in page and "<strong" not in page
    assert "![t](https://evil.example/t.png)" in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_lora_tools_inspect_a_gated_lora_with_the_visitors_token(space):
    from lora_space.ui.tabs.lora_tools import inspect_handler

    with pytest.raises(gr.Error, match="dave/gated-lora is gated"):
        inspect_handler(space, "dave/gated-lora")
    summary, report = inspect_handler(space, "dave/gated-lora", token=GATED_TOKEN)
    assert report["compatible"] and report["trigger_words"] == ["gtd"]


def test_the_lessons_example_names_point_to_discover_with_the_name_as_the_query(space):
    """Issue 16, item 8: `examples/prompts.txt` and the lesson name LoRAs nobody has here
    (`watercolor_style`, `detailed_eyes`); the answer says to search Discover for that name, and the
    Generate tab's button opens Discover with it as the query."""
    lesson = (Path(__file__).resolve().parents[2] / "examples" / "prompts.txt").read_text().splitlines()[1]
    assert "<lora:watercolor_style:0.8> <lora:detailed_eyes:0.6>" in lesson
    with pytest.raises(LoraFileError, match="search Discover for 'watercolor_style' .*query='watercolor_style'"):
        space.generate(lesson, [])  # what /generate calls: a tag ...
    with pytest.raises(LoraFileError, match="search Discover for 'detailed_eyes'"):
        space.generate("a garden", [{"source": "detailed_eyes", "strength": 0.6}])  # ... and a slot alike
    assert unknown_names(["watercolor_style", "alice/watercolor-flux", "./x.safetensors", "watercolor_style"], settings=space.settings) == [
        "watercolor_style"
    ]
    demo = build_demo(space)
    failed = next(
        function.fn for function in demo.fns.values()
        if [getattr(block, "elem_id", None) for block in function.outputs] == ["discover-hint", None]
    )  # fmt: skip
    button, name = failed("", "", None, None, None, no_progress, lesson, *EMPTY)
    assert button.visible and "Search Discover for “watercolor_style”" in button.value and name == "watercolor_style"
    button, name = failed("", "", None, None, None, no_progress, "a garden <lora:alice/watercolor-flux:0.8>", *EMPTY)
    assert not button.visible and name == ""  # a Hub id that failed (gated, offline ...) has its own message
    opener = handler(demo, "discover-query", "discover-page")
    query, page, tabs = opener("watercolor_style")
    assert (query, page, tabs.selected) == ("watercolor_style", 1, "discover")
