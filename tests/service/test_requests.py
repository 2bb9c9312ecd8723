"""Hardening: requests past a limit, odd references and odd names are refused before any GPU time.

`space.engine` is a real tiny `Engine` whose `generate` is counted: every refused request
asserts that the engine was never called.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest

from lora_space.core.errors import HubError, LimitError, LoraFileError, PromptError
from lora_space.generate.engine import Engine
from lora_space.generate.request import Options
from lora_space.library.inspect import inspect_source
from lora_space.library.tools import compare_sources, convert_source, optimize_source
from lora_space.service import LoraSpace
from lora_space.visitors.owners import LOCAL, Visitor
from tests.lora_factory import write_lora

TINY = Options(seed=5, steps=2, width=64, height=64)
HUGE_TEXT = "a" * 100_000


class CountingEngine(Engine):
    """The real engine, counting the requests that reach it; with `forbidden` set it refuses to run
    them (a request that should have been refused must not take minutes of CPU in a test)."""

    forbidden = False

    def generate(self, request, *, progress=None):
        self.calls_here = getattr(self, "calls_here", 0) + 1
        if self.forbidden:
            raise AssertionError(f"the engine was called for {request.options}")
        return super().generate(request, progress=progress)


@pytest.fixture
def space(online_settings, make_space) -> LoraSpace:
    write_lora(online_settings.lora_dir / "ink.safetensors", 1)
    write_lora(online_settings.lora_dir / "neon.safetensors", 2)
    return make_space(online_settings, engine_class=CountingEngine)


@pytest.fixture
def refusing(space) -> LoraSpace:
    """The space, with an engine that fails the test if a request reaches it."""
    space.engine.forbidden = True
    return space


def engine_calls(space: LoraSpace) -> int:
    return getattr(space.engine, "calls_here", 0)


# -- hole 4: two LoRAs with the same name ------------------------------------------------------


def test_two_hub_loras_with_the_same_file_name_blend(space, hub, tmp_path):
    hub.add_model("a/x", files={"pytorch_lora_weights.safetensors": write_lora(tmp_path / "1.safetensors", 3)})
    hub.add_model("b/y", files={"pytorch_lora_weights.safetensors": write_lora(tmp_path / "2.safetensors", 3)})
    hub.add_model("alice/style", files={"style.safetensors": write_lora(tmp_path / "3.safetensors", 4)})
    hub.add_model("bob/style", files={"style.safetensors": write_lora(tmp_path / "4.safetensors", 4)})
    output = space.generate(
        "a cat",
        [{"source": "a/x/pytorch_lora_weights.safetensors", "strength": 0.8}, {"source": "b/y/pytorch_lora_weights.safetensors", "strength": 0.8}],
        TINY,
    )
    # the same tensors twice push the same way: the warning names both by source
    assert any("a/x/pytorch_lora_weights.safetensors and b/y/pytorch_lora_weights.safetensors" in w for w in output.warnings), output.warnings
    output = space.generate("a cat <lora:alice/style:0.7> <lora:bob/style:0.7>", [], TINY)
    assert [lora["source"] for lora in output.metadata["loras"]] == ["alice/style", "bob/style"]
    assert any("alice/style and bob/style" in w for w in output.warnings), output.warnings


# -- hole 7: the work of one request, the negative prompt, requests per visitor ---------------------


@pytest.mark.parametrize(
    "options, message",
    [
        (Options(steps=100, num_images=8, width=2048, height=2048), "work"),
        (Options(steps=100, num_images=4, width=1024, height=1024, true_cfg=2.0, negative_prompt="blur"), "work"),
        (Options(steps=2, width=64, height=64, negative_prompt=HUGE_TEXT), "negative prompt has 100000 characters"),
        (Options(steps=101, width=64, height=64), "steps=101"),
        (Options(steps=2, width=4096, height=64), "width=4096"),
        (Options(steps=2, width=64, height=72 + 1), "height=73"),
        (Options(steps=2, width=64, height=64, num_images=9), "num_images=9"),
        (Options(steps=2, width=64, height=64, seed=2**31), "seed="),
    ],
)
def test_a_request_past_a_limit_never_reaches_the_engine(refusing, options, message):
    space = refusing
    with pytest.raises(LimitError, match=message):
        space.generate("a cat", [{"source": "ink", "strength": 0.5}], options)
    assert engine_calls(space) == 0


def test_work_is_bounded_for_sweeps_and_batches_as_a_whole(refusing):
    space = refusing
    big = Options(steps=28, width=1024, height=1024)
    with pytest.raises(LimitError, match="work"):
        space.sweep("a cat", [], "ink", [0, 0.2, 0.4, 0.6, 0.8, 1.0], "neon", [0, 0.5, 1, 1.5, 2, 2.5], big)
    with pytest.raises(LimitError, match="work"):
        space.batch([f"prompt {index}" for index in range(24)], [], big)
    assert engine_calls(space) == 0
    limits = space.settings.limits
    assert limits.work(Options(steps=28, width=1024, height=1024)) <= limits.max_work  # the usual request fits
    assert limits.work(Options(steps=28, width=1024, height=1024, num_images=4, true_cfg=3.0, negative_prompt="x")) <= limits.max_work


@pytest.mark.parametrize("field", ["prompt", "sweep prompt", "batch prompt", "negative"])
def test_prompts_of_100_kb_are_refused_before_the_engine(refusing, field):
    space = refusing
    with pytest.raises((LimitError, PromptError), match="100000 characters|characters"):
        if field == "prompt":
            space.generate(HUGE_TEXT, [], TINY)
        elif field == "sweep prompt":
            space.sweep(HUGE_TEXT, [], "ink", [0, 1], options=TINY)
        elif field == "batch prompt":
            space.batch(["fine", HUGE_TEXT], [], TINY)
        else:
            space.generate("a cat", [], dataclasses.replace(TINY, negative_prompt=HUGE_TEXT, true_cfg=2.0))
    assert engine_calls(space) == 0


def test_one_visitor_gets_a_bounded_number_of_requests_at_once(space):
    space.settings = dataclasses.replace(space.settings, limits=dataclasses.replace(space.settings.limits, max_requests_per_visitor=1))
    alice, bob = Visitor("hub", "alice"), Visitor("hub", "bob")
    entered, release = threading.Event(), threading.Event()
    original = space.engine.generate

    def slow(request, *, progress=None):
        entered.set()
        release.wait(30)
        return original(request, progress=progress)

    space.engine.generate = slow
    first = threading.Thread(target=space.generate, args=("a cat", [], TINY), kwargs={"visitor": alice})
    first.start()
    assert entered.wait(30)
    with pytest.raises(LimitError, match="already has 1 request running"):
        space.generate("a dog", [], TINY, visitor=alice)
    release.set()
    assert space.generate("a dog", [], TINY, visitor=bob).files  # another visitor is not held up
    first.join(30)
    assert space.generate("a dog", [], TINY, visitor=alice).files  # and alice again once hers ended
    assert LOCAL.is_local  # the local user (one person) is not counted


# -- hole 11: checks before the GPU work ----------------------------------------------------------


@pytest.mark.parametrize("strengths", [[0, 9], [float("nan")], [-5]])
def test_sweep_strengths_are_checked_before_generating(refusing, strengths):
    space = refusing
    with pytest.raises(PromptError, match="strength"):
        space.sweep("a cat", [], "ink", strengths, options=TINY)
    with pytest.raises(PromptError, match="strength"):
        space.sweep("a cat", [], "ink", [0, 1], "neon", strengths, options=TINY)
    assert engine_calls(space) == 0


@pytest.mark.parametrize("name", ['we"ird', "odd:name"])
def test_a_library_name_that_a_recipe_cannot_hold_is_refused_before_generating(refusing, name):
    space = refusing
    write_lora(space.settings.lora_dir / f"{name}.safetensors", 7)
    with pytest.raises(PromptError, match="cannot hold"):
        space.generate("a cat", [{"source": name, "strength": 0.5}], TINY)
    assert engine_calls(space) == 0


# -- references in every field that takes a LoRA source ---------------------------------------------

BAD_REFERENCES = [
    "http://169.254.169.254/",
    "http://169.254.169.254/latest/meta-data.safetensors",
    "file:///etc/passwd",
    "user/repo/../../x",
    "user/repo/../../x.safetensors",
    "user/repo/%2e%2e/x.safetensors",
    "user/repo/x.safetensors?download=1",
    "user/repo/x.safetensors#frag",
    "a" * 200 + "/repo",
    "user/re po",
    "user/repo!/x.safetensors",
    "-user/repo",
    "user//repo",
    "/etc/passwd",
    "~root/.ssh/id_rsa.safetensors",
    "../../../../etc/passwd",
]


@pytest.mark.parametrize("reference", BAD_REFERENCES)
def test_a_bad_reference_is_refused_in_every_field_without_a_hub_call(refusing, hub, reference):
    space = refusing
    settings = space.settings
    hub.reset_log()
    calls = [
        lambda: space.generate("a cat", [{"source": reference, "strength": 0.5}], TINY),
        lambda: space.sweep("a cat", [], reference, [0, 1], options=TINY),
        lambda: space.sweep("a cat", [], "ink", [0, 1], reference, [0, 1], options=TINY),
        lambda: space.batch(["a cat"], [{"source": reference, "strength": 0.5}], TINY),
        lambda: inspect_source(reference, settings=settings),
        lambda: convert_source(reference, "kohya", settings=settings),
        lambda: optimize_source(reference, settings=settings, rank=2),
        lambda: compare_sources([reference, "ink"], settings=settings),
    ]
    messages = set()
    for call in calls:
        with pytest.raises((LoraFileError, PromptError, HubError)) as caught:
            call()
        assert not isinstance(caught.value, HubError), caught.value  # refused here, not by the Hub
        messages.add(str(caught.value))
        assert "/etc/" not in str(caught.value).replace(reference, "") and str(settings.lora_dir) not in str(caught.value)
    assert engine_calls(space) == 0
    assert hub.requests == []


BAD_REPO_IDS = [ref for ref in BAD_REFERENCES if ref.count("/") != 2 or ref.startswith(("/", "file:", "http:"))] + ["a/b/c", "x" * 97, "alice/" + "r" * 97, "alice/re--po", "alice/.hidden"]


@pytest.mark.parametrize("repo_id", BAD_REPO_IDS)
def test_a_bad_repo_id_is_refused_in_every_field_that_takes_one_without_a_hub_call(refusing, hub, repo_id):
    from lora_space.core.errors import LoraSpaceError
    from lora_space.publish.publish import check_repo_id

    space = refusing
    hub.reset_log()
    calls = [lambda: check_repo_id(repo_id)]  # /publish
    if repo_id.count("/") != 2:  # as a LoRA source, `a/b/c` is file c of repo a/b: a fair question for the Hub
        calls.append(lambda: space.bake([{"source": repo_id, "strength": 0.5}, {"source": "ink", "strength": 0.5}]))
    for call in calls:
        with pytest.raises(LoraSpaceError):
            call()
    assert engine_calls(space) == 0
    assert hub.requests == []


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda space: space.generate("a cat", [{"source": f"l{index}", "strength": 0.1} for index in range(7)], TINY), "use at most 6"),
        (lambda space: space.generate("a cat <lora:ink:0.5> <lora:neon:0.5>", [{"source": "ink", "strength": 0.5}], TINY), "given twice"),
        (lambda space: space.sweep("a cat", [], "ink", [0.1 * index for index in range(7)], "neon", [0.1 * index for index in range(6)], TINY), "at most 36"),
        (lambda space: space.batch([f"prompt {index}" for index in range(25)], [], TINY), "at most 24"),
        (lambda space: space.generate("a cat", [{"source": "ink", "strength": 3.5}], TINY), "outside"),
        (lambda space: space.generate("a cat", [{"source": "ink", "strength": float("inf")}], TINY), "outside"),
    ],
)
def test_every_count_and_strength_limit_is_checked_before_the_engine(refusing, call, message):
    for index in range(7):
        write_lora(refusing.settings.lora_dir / f"l{index}.safetensors", index)
    with pytest.raises((LimitError, PromptError), match=message):
        call(refusing)
    assert engine_calls(refusing) == 0
