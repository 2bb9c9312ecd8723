"""Discover against the Hub stand-in: search, summaries, cache, evaluation, safe cards, errors."""

from __future__ import annotations

import time

import pytest

from lora_space.core.errors import HubError, LoraFileError
from lora_space.core.settings import Settings
from lora_space.discover.finder import (
    Discover,
    choose_weight_file,
    shared_widget_words,
    starter_list,
)
from tests.discover_repos import (  # noqa: F401 (a fixture)
    FLUX,
    GATED_TOKEN,
    SCRIPT_MARK,
    SDXL,
    add_discover_repos,
    instant_retries,
)
from tests.hub_standin import isolated_hub


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as stand_in:
        stand_in.ids = add_discover_repos(stand_in, tmp_path / "files")  # type: ignore[attr-defined]
        stand_in.reset_log()
        yield stand_in


@pytest.fixture
def hub_settings(tmp_path, hub):
    return Settings.from_env({
        "LORA_SPACE_BASE_MODEL": "tiny-random",
        "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"),
        "LORA_SPACE_DATA_DIR": str(tmp_path / "data"),
        "HF_ENDPOINT": hub.endpoint,
    })


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def searches(hub) -> list:
    return [request for request in hub.requests if request.path == "/api/models"]


def test_search_finds_the_current_bases_loras_best_first_in_one_request(hub, hub_settings):
    results = Discover(hub_settings).search()
    assert [item.repo_id for item in results] == [
        "alice/watercolor-flux", "dave/gated-lora", "carol/pickle-only", "bob/several-files", "mallory/html-card", "frank/no-card",
    ]  # by downloads; erin's SDXL LoRA is not for FLUX.1-dev (what tiny stands in for)
    [request] = searches(hub)
    assert request.query["filter"] == ["lora", f"base_model:adapter:{FLUX}"]
    assert "cardData" in request.query["expand"] and "siblings" in request.query["expand"]
    assert len(hub.requests) == 1  # no request per result


def test_each_result_is_summarised_from_the_search_answer(hub, hub_settings):
    found = {item.repo_id: item for item in Discover(hub_settings).search()}
    card = found["alice/watercolor-flux"]
    assert card.to_dict() | {"last_modified": "x"} == {
        "repo_id": "alice/watercolor-flux", "author": "alice", "downloads": 5000, "likes": 80,
        "trigger_words": ["wtrclr"], "trigger_words_from": "card",
        "preview_url": f"{hub.endpoint}/alice/watercolor-flux/resolve/main/images/preview.png",
        "license": "apache-2.0", "last_modified": "x", "weight_file": "watercolor-flux.safetensors",
        "base_model": FLUX, "gated": False, "problem": None,
    }
    assert card.last_modified.startswith("20")
    several = found["bob/several-files"]
    assert several.trigger_words == ["bobstyle"] and several.trigger_words_from == "widget"  # shared by every example prompt
    assert several.weight_file == "pytorch_lora_weights.safetensors"  # the card's text is not in a search answer
    pickle = found["carol/pickle-only"]
    assert pickle.weight_file is None and "pickle" in pickle.problem
    gated = found["dave/gated-lora"]
    assert gated.gated and gated.license == "flux-1-dev-non-commercial-license" and gated.trigger_words == ["gtd"]
    assert found["frank/no-card"].trigger_words == [] and found["frank/no-card"].license == ""


def test_another_base_model_and_a_query(hub, hub_settings):
    discover = Discover(hub_settings)
    assert [item.repo_id for item in discover.search(base_model=SDXL)] == ["erin/sdxl-lora"]
    assert [item.repo_id for item in discover.search("water")] == ["alice/watercolor-flux"]
    assert [request.query.get("search") for request in searches(hub)] == [None, ["water"]]


def test_sorts_ask_the_hub_by_its_own_keys(hub, hub_settings):
    discover = Discover(hub_settings, ttl=0)
    assert discover.search(sort="likes")[0].repo_id == "alice/watercolor-flux"
    assert discover.search(sort="trending")[0].repo_id == "bob/several-files"
    assert discover.search(sort="recent")[0].repo_id == "bob/several-files"
    assert [request.query["sort"] for request in searches(hub)] == [["likes"], ["trendingScore"], ["lastModified"]]


def test_paging_is_one_request_per_page_and_the_cache_serves_pages_and_sorts_again(hub, hub_settings):
    clock = Clock()
    discover = Discover(hub_settings, clock=clock)
    first = discover.search(limit=2, page=1)
    second = discover.search(limit=2, page=2)
    assert [item.repo_id for item in first + second] == [
        "alice/watercolor-flux", "dave/gated-lora", "carol/pickle-only", "bob/several-files",
    ]
    assert [request.query["limit"] for request in searches(hub)] == [["2"], ["4"]]
    assert [item.repo_id for item in discover.search(limit=2, page=1)] == [item.repo_id for item in first]
    assert len(searches(hub)) == 2  # page 1 again: from the cache
    everything = discover.search(limit=24)  # the whole list (6 < 24): complete
    assert len(searches(hub)) == 3
    by_likes = discover.search(sort="likes", limit=24)
    assert len(searches(hub)) == 3  # a complete list is re-sorted here
    assert [item.likes for item in by_likes] == sorted((item.likes for item in everything), reverse=True)
    clock.now += 301  # past the few minutes a result is kept
    discover.search(limit=2, page=1)
    assert len(searches(hub)) == 4


def test_bad_search_arguments_say_what_is_allowed(hub_settings):
    discover = Discover(hub_settings)
    with pytest.raises(LoraFileError, match="sort='popular' is not one of downloads, likes, trending, recent"):
        discover.search(sort="popular")
    with pytest.raises(LoraFileError, match="limit=0 is outside 1..100"):
        discover.search(limit=0)
    with pytest.raises(LoraFileError, match="page=0"):
        discover.search(page=0)


def test_evaluation_reads_only_a_ranged_card_and_a_ranged_header(hub, hub_settings):
    evaluation = Discover(hub_settings).evaluate("alice/watercolor-flux")
    report = evaluation.report
    assert report.format == "diffusers" and report.rank == 4 and report.compatible and report.coverage == 1.0
    assert evaluation.card.images == [f"{hub.endpoint}/alice/watercolor-flux/resolve/main/images/preview.png"]
    assert "<h1>Watercolor</h1>" in evaluation.card.html
    assert evaluation.verdict[0].startswith("Popular: 5,000 downloads")
    assert "Compatible with tiny" in evaluation.verdict[1]
    assert evaluation.verdict[2] == "Trigger words known (from its card): wtrclr."
    assert "Apache 2.0 allows commercial use" in evaluation.verdict[3]
    files = [request for request in hub.requests if "/resolve/" in request.path]
    assert [request.path.rsplit("/", 1)[-1] for request in files] == ["README.md", "watercolor-flux.safetensors"]
    assert all(request.range and request.status == 206 for request in files)  # never a whole file
    assert hub.bytes_served("/resolve/") < 200_000


def test_the_weight_file_the_card_names_wins_and_its_metadata_gives_trigger_words(hub, hub_settings):
    evaluation = Discover(hub_settings).evaluate("bob/several-files")
    assert evaluation.summary.weight_file == "chosen.safetensors"
    assert evaluation.summary.trigger_words == ["bobword"] and evaluation.summary.trigger_words_from == "metadata"
    assert evaluation.report.source == "bob/several-files/chosen.safetensors"
    assert any("CC BY-NC 4.0 does not allow commercial use" in line for line in evaluation.verdict)
    assert evaluation.verdict[0].startswith("Not widely used yet")


def test_a_pickle_only_repo_is_never_read_and_says_why(hub, hub_settings):
    evaluation = Discover(hub_settings).evaluate("carol/pickle-only")
    assert evaluation.report is None and evaluation.summary.weight_file is None
    assert evaluation.verdict[-1].startswith("Cannot be used: It holds only pickle-format weights (lora.bin)")
    assert not any(request.path.endswith("lora.bin") for request in hub.requests)


def test_a_gated_repo_needs_a_token_with_access(hub, hub_settings):
    discover = Discover(hub_settings)
    anonymous = discover.evaluate("dave/gated-lora")
    assert anonymous.report is None
    assert any("gated: accept its licence on the Hub and log in" in note for note in anonymous.notes)
    assert "Compatibility unknown" in " ".join(anonymous.verdict)
    signed_in = discover.evaluate("dave/gated-lora", token=GATED_TOKEN)
    assert signed_in.report.compatible and not signed_in.notes
    assert any("FLUX.1 [dev] Non-Commercial License does not allow commercial use" in line for line in signed_in.verdict)
    assert any(line.startswith("Gated:") for line in signed_in.verdict)
    assert {request.user for request in hub.requests if "/resolve/" in request.path} == {None, "gina"}


def test_another_base_models_lora_is_named_as_such(hub, hub_settings):
    evaluation = Discover(hub_settings).evaluate("erin/sdxl-lora")
    assert evaluation.summary.base_model == SDXL
    assert f"Its card names {SDXL} as its base model, not {FLUX}." in evaluation.verdict


def test_a_card_with_raw_html_and_a_script_is_rendered_without_them(hub, hub_settings):
    evaluation = Discover(hub_settings).evaluate("mallory/html-card")
    page = evaluation.card.html.lower()
    assert SCRIPT_MARK not in page and "<script" not in page and "document.title" not in page
    assert "javascript:" not in page.replace("[here](javascript:alert(1))", "")  # only as plain text, never a link
    assert "onerror" not in page and "onclick" not in page and "evil.example" not in page
    assert "<b" not in page and "<div" not in page
    assert evaluation.card.images == [f"{hub.endpoint}/mallory/html-card/resolve/main/images/ok.png"]
    assert evaluation.card.dropped_images == 2
    assert "<h1>nice lora</h1>" in page and "bold" in page


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (429, "rate-limiting requests; wait a minute"),
        (503, "answered HTTP 503"),
        (500, "answered HTTP 500"),
    ],
)
def test_hub_failures_are_clear_messages(hub, hub_settings, instant_retries, status, message):
    hub.outage = status
    with pytest.raises(HubError, match=message):
        Discover(hub_settings).search()
    assert instant_retries  # huggingface_hub tried again before giving up
    with pytest.raises(HubError, match=message):
        Discover(hub_settings).evaluate("alice/watercolor-flux")


def test_offline_and_no_network(hub, hub_settings, tmp_path, instant_retries):
    offline = Settings.from_env({
        "LORA_SPACE_BASE_MODEL": "tiny-random", "LORA_SPACE_LORA_DIR": str(tmp_path / "l"), "LORA_SPACE_DATA_DIR": str(tmp_path / "d"),
        "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "1",
    })
    with pytest.raises(HubError, match="offline"):
        Discover(offline).search()
    assert hub.requests == []
    endpoint = hub.endpoint
    hub.stop()
    gone = Settings.from_env({
        "LORA_SPACE_BASE_MODEL": "tiny-random", "LORA_SPACE_LORA_DIR": str(tmp_path / "l"), "LORA_SPACE_DATA_DIR": str(tmp_path / "d"),
        "HF_ENDPOINT": endpoint,
    })
    with pytest.raises(HubError, match="Cannot reach the Hub"):
        Discover(gone).search()


def test_an_unknown_repo_is_a_clear_message(hub_settings):
    with pytest.raises(HubError, match="No repo nobody/nothing on the Hub"):
        Discover(hub_settings).evaluate("nobody/nothing")
    with pytest.raises(LoraFileError, match="not a Hub repo id"):
        Discover(hub_settings).evaluate("just-a-name")


def test_weight_file_choice_and_widget_words():
    files = ["a.safetensors", "pytorch_lora_weights.safetensors", "model.bin"]
    assert choose_weight_file("u/r", files) == "pytorch_lora_weights.safetensors"
    assert choose_weight_file("u/r", files, "weight_name='a.safetensors'") == "a.safetensors"
    assert choose_weight_file("u/r", files, "weight_name='missing.safetensors'") == "pytorch_lora_weights.safetensors"
    assert choose_weight_file("u/r", ["model.bin", "x.ckpt"]) is None
    assert shared_widget_words(["TOK style, a cat", "a dog, tok style"]) == ["TOK style"]
    assert shared_widget_words(["only one prompt, here"]) == []


def test_the_starter_list_is_data_with_the_courses_categories():
    entries = starter_list()
    assert {entry["category"] for entry in entries} == {"style", "character", "concept", "quality"}
    assert all(entry["repo_id"].count("/") == 1 and entry["title"] for entry in entries)


def test_links_survive_and_a_stray_bracket_stays_text():
    from lora_space.hub.cards import render_card

    card = render_card("See [the docs](https://example.com/docs) [and a stray [bracket", repo_id="u/r", endpoint="http://hub.test")
    assert '<a href="https://example.com/docs" target="_blank" rel="nofollow noopener noreferrer">the docs</a>' in card.html
    assert "[and a stray [bracket" in card.html


@pytest.mark.timeout(60)
def test_widget_words_of_a_huge_card_are_found_in_linear_time():
    """Each part was looked up in sets rebuilt for every part: 3.4 s for two prompts of 5,000 parts."""
    prompt = ",".join(f"w{index}" for index in range(5000))
    started = time.perf_counter()
    words = shared_widget_words([prompt, prompt.upper()])
    assert time.perf_counter() - started < 0.5
    assert words == [f"w{index}" for index in range(32)]  # kept as trigger words are: at most 32


def test_card_trigger_words_are_bounded_as_every_trigger_word_is():
    from lora_space.hub.cards import trigger_words_from_card

    card = {"instance_prompt": ",".join(f"w{index}" for index in range(100_000)) + ", " + "x" * 300}
    assert trigger_words_from_card(card) == [f"w{index}" for index in range(32)]
