"""Discover checks Hub ids before any request (issue 14, second pass): a bad repo id or base model
is refused with the fix, and the stand-in sees no request for it."""

from __future__ import annotations

import pytest

from lora_space.core.errors import LoraFileError
from lora_space.core.settings import Settings
from lora_space.discover.finder import Discover
from tests.discover_repos import add_discover_repos
from tests.hub_standin import isolated_hub

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
        "LORA_SPACE_BASE_MODEL": "tiny-random", "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"),
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
