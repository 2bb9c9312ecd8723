"""Discover in a real browser against the Hub stand-in, and `/search_loras` from gradio_client."""

from __future__ import annotations

import pytest

from tests.app_process import running_app_on_hub
from tests.browser import app_page
from tests.discover_repos import SCRIPT_MARK, add_discover_repos, lora_bytes
from tests.hub_standin import HubStandIn

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # each test here drives Chromium against the app (`python app.py`)

SOURCE = "alice/watercolor-flux/watercolor-flux.safetensors"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("discover-hub")
    with HubStandIn(root=root / "hub") as stand_in:
        add_discover_repos(stand_in, root / "files")
        stand_in.add_model("XLabs-AI/flux-RealismLora", files={  # a starter list entry
            "README.md": "---\nbase_model: black-forest-labs/FLUX.1-dev\ntags: [lora]\nlicense: other\n---\n# Realism\n",
            "lora.safetensors": lora_bytes(root / "files", "realism", 9),
        })
        yield stand_in


@pytest.fixture(scope="module")
def app(tmp_path_factory, hub):
    root = tmp_path_factory.mktemp("browser-discover")
    with running_app_on_hub(root, hub.endpoint) as url:
        yield url, root


@pytest.fixture(scope="module")
def page(app):
    url, root = app
    with app_page(url, root) as page:
        yield page


def test_the_starter_list_shows_before_the_first_search(page):
    starter = page.locator("#discover-starter")
    starter.get_by_text("quality").first.wait_for(timeout=30_000)
    assert "XLabs-AI/flux-RealismLora" in starter.inner_text()


def test_a_starter_opens_and_an_unknown_repo_is_a_clear_message(page):
    page.locator("#discover-starter").get_by_text("XLabs-AI/flux-RealismLora", exact=True).filter(visible=True).first.click()
    page.locator("#discover-verdict h3").get_by_text("XLabs-AI/flux-RealismLora").wait_for(timeout=30_000)
    assert "Licence other: LoRA Space has no facts about it" in page.locator("#discover-verdict").inner_text()
    box = page.locator("#discover-open-box textarea, #discover-open-box input").first
    box.fill("nobody/nothing")
    page.locator("#discover-open").click()
    page.get_by_text("No repo nobody/nothing on the Hub").first.wait_for(timeout=30_000)


def test_a_card_with_a_script_never_runs_or_reaches_the_page(page, hub):
    page.get_by_role("tab", name="Discover").click()
    box = page.locator("#discover-open-box textarea, #discover-open-box input").first
    box.fill("mallory/html-card")
    page.locator("#discover-open").click()
    card = page.locator("#discover-card")
    card.get_by_text("Nice LoRA").wait_for(timeout=30_000)
    html = card.inner_html()
    assert "<script" not in html and SCRIPT_MARK not in html and "evil.example" not in html and "javascript:" not in html.replace("[here](javascript:alert(1))", "")
    assert page.evaluate(f"() => window.{SCRIPT_MARK} === undefined && document.title !== '{SCRIPT_MARK}'")
    sources = card.locator("img").evaluate_all("images => images.map(image => image.getAttribute('src'))")
    assert sources == [f"{hub.endpoint}/mallory/html-card/resolve/main/images/ok.png"]


def test_search_open_and_use_in_generate(page, hub):
    # A LoRA already in slot 1, and slot 2 at another strength: Use must take slot 2 and set 0.8.
    page.get_by_role("tab", name="Generate").click()
    first = page.locator("input[aria-label='LoRA 1']").first
    first.fill("wtrclr_style")
    first.press("Enter")
    strength = page.locator("input[aria-label='number input for strength']").nth(1)
    strength.fill("1.5")
    strength.press("Enter")
    assert float(strength.input_value()) == 1.5
    page.get_by_role("tab", name="Discover").click()
    page.locator("#discover-query textarea, #discover-query input").first.fill("")
    hub.reset_log()
    page.locator("#discover-search").click()
    results = page.locator("#discover-results")
    row = results.get_by_text("alice/watercolor-flux", exact=True).filter(visible=True).first
    try:
        row.wait_for(timeout=30_000)
    except Exception:
        page.screenshot(path="/tmp/discover_fail.png", full_page=True)
        raise
    assert [request.path for request in hub.requests if request.path.startswith("/api/")] == ["/api/models"]  # one per page
    row.click()
    page.locator("#discover-verdict h3").get_by_text("alice/watercolor-flux").wait_for(timeout=30_000)
    assert "Compatible with tiny" in page.locator("#discover-verdict").inner_text()
    assert "Trigger words known (from its card): wtrclr" in page.locator("#discover-verdict").inner_text()
    page.locator("#discover-card").get_by_text("Soft washes.").wait_for(timeout=10_000)
    app_reads = [request for request in hub.requests if request.path.endswith((".safetensors", "README.md"))]
    assert app_reads and all(request.range for request in app_reads)  # evaluation: ranged reads only (the browser loads images)
    page.locator("#discover-use").click()
    page.get_by_role("tab", name="Generate", selected=True).wait_for(timeout=60_000)
    page.wait_for_function(
        f"() => [...document.querySelectorAll(\"input[aria-label='LoRA 2']\")].some(el => el.value === '{SOURCE}')",
        timeout=60_000,
    )
    assert page.locator("input[aria-label='LoRA 1']").first.input_value() == "wtrclr_style"
    assert float(page.locator("input[aria-label='number input for strength']").nth(1).input_value()) == 0.8
    assert "wtrclr" in page.locator("#prompt textarea").input_value()
    page.screenshot(path=str(page.root / "discover.png"))  # type: ignore[attr-defined]
    downloads = [r for r in hub.requests if r.path.endswith("watercolor-flux.safetensors") and not r.range and r.method == "GET"]
    assert len(downloads) == 1  # downloaded once, into the app's Hub cache


def test_search_loras_from_gradio_client(app, hub):
    from gradio_client import Client

    url, _ = app
    client = Client(url, verbose=False)
    results = client.predict(query="", sort="likes", limit=2, page=1, api_name="/search_loras")
    assert [item["repo_id"] for item in results] == ["alice/watercolor-flux", "dave/gated-lora"]
    assert results[0]["trigger_words"] == ["wtrclr"] and results[0]["weight_file"] == "watercolor-flux.safetensors"
    assert set(results[0]) >= {"repo_id", "author", "downloads", "likes", "trigger_words", "preview_url", "license",
                               "last_modified", "weight_file", "base_model"}
    other = client.predict(base_model="stabilityai/stable-diffusion-xl-base-1.0", api_name="/search_loras")
    assert [item["repo_id"] for item in other] == ["erin/sdxl-lora"]
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="sort='best' is not one of downloads, likes, trending, recent"):
        client.predict(sort="best", api_name="/search_loras")
