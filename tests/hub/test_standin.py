"""The Hub stand-in answers real `huggingface_hub` calls as the Hub does (over real HTTP)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_standin import HubStandIn, isolated_hub, safetensors_bytes

FLUX = "black-forest-labs/FLUX.1-dev"
CARD = f"---\nbase_model: {FLUX}\ninstance_prompt: wtrclr\ntags: [lora, text-to-image]\n---\n# Watercolor\n"
ALICE = "hf_alice_token"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    """Alice (in org "studio"), Bob (read-only token), and a few LoRAs."""
    with isolated_hub(tmp_path, monkeypatch) as stand_in:
        stand_in.add_user("alice", token=ALICE, orgs=["studio"])
        stand_in.add_user("bob", token="hf_bob_token", role="read")
        lora = safetensors_bytes(4)
        stand_in.add_model("alice/watercolor-lora", files={"lora.safetensors": lora, "README.md": CARD},
                           downloads=10, likes=30, trending_score=1, last_modified=datetime(2026, 1, 1, tzinfo=UTC))
        stand_in.add_model("bob/ink-lora", files={"ink.safetensors": lora}, tags=["lora"],
                           card_data={"base_model": FLUX}, downloads=300, likes=2, trending_score=5,
                           last_modified=datetime(2025, 6, 1, tzinfo=UTC))
        stand_in.add_model("carol/sdxl-lora", files={"x.safetensors": lora}, tags=["lora"],
                           card_data={"base_model": "stabilityai/sdxl"}, downloads=1000)
        stand_in.add_model("alice/secret-lora", files={"s.safetensors": lora, "README.md": CARD}, private=True)
        stand_in.add_model("dana/gated-lora", files={"g.safetensors": lora, "README.md": CARD}, gated="manual")
        yield stand_in


def anonymous(hub: HubStandIn) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=False)


def test_list_models_filters_and_sorts_descending(hub: HubStandIn) -> None:
    api = anonymous(hub)
    flux = [f"base_model:adapter:{FLUX}", "lora"]
    assert [m.id for m in api.list_models(filter=flux, sort="downloads")] == [
        "bob/ink-lora", "alice/watercolor-lora", "dana/gated-lora"]
    assert [m.id for m in api.list_models(filter=flux, sort="likes", limit=1)] == ["alice/watercolor-lora"]
    assert [m.id for m in api.list_models(filter=flux, sort="trending_score", limit=1)] == ["bob/ink-lora"]
    assert [m.id for m in api.list_models(search="LORA", author="alice", sort="last_modified")] == [
        "alice/watercolor-lora"]
    assert [m.id for m in api.list_models(filter="lora", search="ink")] == ["bob/ink-lora"]


def test_list_models_shows_private_repos_to_their_owner_only(hub: HubStandIn) -> None:
    assert "alice/secret-lora" not in [m.id for m in anonymous(hub).list_models()]
    assert "alice/secret-lora" in [m.id for m in HfApi(endpoint=hub.endpoint, token=ALICE).list_models()]


def test_list_models_fields_follow_full_card_data_and_expand(hub: HubStandIn) -> None:
    api = anonymous(hub)
    (plain,) = api.list_models(search="watercolor")
    assert plain.card_data is None and plain.siblings is None and plain.downloads == 10
    (full,) = api.list_models(search="watercolor", full=True, cardData=True)
    assert full.card_data["instance_prompt"] == "wtrclr"
    assert [s.rfilename for s in full.siblings] == ["README.md", "lora.safetensors"]
    assert full.last_modified == datetime(2026, 1, 1, tzinfo=UTC)
    (expanded,) = api.list_models(search="watercolor", expand=["cardData", "likes"])
    assert expanded.likes == 30 and expanded.downloads is None and expanded.card_data["base_model"] == FLUX


def test_list_models_paginates_with_link_header(hub: HubStandIn) -> None:
    hub.page_size = 2
    hub.reset_log()
    ids = [m.id for m in anonymous(hub).list_models(sort="downloads")]
    assert ids == ["carol/sdxl-lora", "bob/ink-lora", "alice/watercolor-lora", "dana/gated-lora"]
    pages = [r for r in hub.requests if r.path == "/api/models"]
    assert len(pages) == 2 and pages[1].query["cursor"] == ["2"] and pages[1].query["sort"] == ["downloads"]


def test_model_info_has_siblings_card_data_and_derived_tags(hub: HubStandIn) -> None:
    info = anonymous(hub).model_info("alice/watercolor-lora", files_metadata=True)
    sizes = {s.rfilename: (s.size, s.lfs is not None) for s in info.siblings}
    assert sizes == {"README.md": (len(CARD), False), "lora.safetensors": (len(safetensors_bytes(4)), True)}
    assert info.card_data["instance_prompt"] == "wtrclr" and info.author == "alice" and info.gated is False
    assert f"base_model:adapter:{FLUX}" in info.tags and "lora" in info.tags
    assert info.base_models == {"relation": "adapter", "models": [{"id": FLUX}]}
    assert len(info.sha) == 40 and info.likes == 30
    only_card = anonymous(hub).model_info("alice/watercolor-lora", expand=["cardData"])
    assert only_card.siblings is None and only_card.card_data["base_model"] == FLUX


def test_hf_hub_download_gets_the_file(hub: HubStandIn, tmp_path: Path) -> None:
    path = hf_hub_download("alice/watercolor-lora", "lora.safetensors", endpoint=hub.endpoint,
                           cache_dir=tmp_path / "cache", token=False)
    assert Path(path).read_bytes() == hub.file_bytes("alice/watercolor-lora", "lora.safetensors")


def test_range_read_sends_only_the_requested_bytes(hub: HubStandIn) -> None:
    big = safetensors_bytes(4, tensor_bytes=5 * 1024 * 1024)
    hub.add_model("alice/big-lora", files={"big.safetensors": big})
    hub.reset_log()
    metadata = anonymous(hub).parse_safetensors_file_metadata("alice/big-lora", "big.safetensors")
    assert len(metadata.tensors) == 4
    assert [(r.method, r.status, r.range) for r in hub.requests] == [("GET", 206, "bytes=0-100000")]
    assert hub.bytes_served("big.safetensors") == 100_001


def test_range_headers_follow_http(hub: HubStandIn) -> None:
    data = hub.file_bytes("alice/watercolor-lora", "lora.safetensors")
    url = f"{hub.endpoint}/alice/watercolor-lora/resolve/main/lora.safetensors"
    with httpx2.Client() as client:
        tail = client.get(url, headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == data[-10:]
        assert tail.headers["Content-Range"] == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"
        assert client.get(url, headers={"Range": "bytes=5-100000000"}).content == data[5:]
        beyond = client.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
        head = client.head(url)
        assert head.headers["Content-Length"] == str(len(data)) and head.headers["Accept-Ranges"] == "bytes"
        assert "X-Repo-Commit" in head.headers and "ETag" in head.headers and not head.content


def test_whoami_accepts_a_known_token_and_refuses_a_bad_one(hub: HubStandIn) -> None:
    me = HfApi(endpoint=hub.endpoint).whoami(token=ALICE)
    assert me["name"] == "alice" and me["orgs"][0]["name"] == "studio"
    assert me["auth"]["accessToken"]["role"] == "write"
    with pytest.raises(HfHubHTTPError, match="Invalid user token") as caught:
        HfApi(endpoint=hub.endpoint).whoami(token="hf_wrong")
    assert caught.value.response.status_code == 401


def test_create_repo_and_commit_then_download(hub: HubStandIn, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.endpoint, token=ALICE)
    url = api.create_repo("alice/new-lora", private=True)
    assert url.repo_id == "alice/new-lora"
    lora = safetensors_bytes(2)
    info = api.create_commit("alice/new-lora", [
        CommitOperationAdd("pytorch_lora_weights.safetensors", lora),
        CommitOperationAdd("README.md", CARD.encode()),
    ], commit_message="Add LoRA", commit_description="trained here")
    assert info.oid == api.model_info("alice/new-lora").sha
    assert info.commit_url == f"{hub.endpoint}/alice/new-lora/commit/{info.oid}"
    (commit,) = hub.commits["alice/new-lora"]
    assert (commit.summary, commit.description) == ("Add LoRA", "trained here")
    assert commit.files["pytorch_lora_weights.safetensors"] == lora
    assert [p.path for p in hub.requests if p.method == "POST"][-3:] == [
        "/api/validate-yaml", "/api/models/alice/new-lora/preupload/main", "/api/models/alice/new-lora/commit/main"]
    path = hf_hub_download("alice/new-lora", "pytorch_lora_weights.safetensors", endpoint=hub.endpoint,
                           token=ALICE, cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == lora
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="notes/v2.txt", repo_id="alice/new-lora")
    api.create_commit("alice/new-lora", [CommitOperationDelete("README.md")], commit_message="Drop card")
    assert api.list_repo_files("alice/new-lora") == [
        ".gitattributes", "notes/v2.txt", "pytorch_lora_weights.safetensors"]
    assert len(hub.commits["alice/new-lora"]) == 3


def test_create_repo_conflicts_and_permissions(hub: HubStandIn) -> None:
    api = HfApi(endpoint=hub.endpoint, token=ALICE)
    api.create_repo("studio/team-lora")
    with pytest.raises(HfHubHTTPError) as existing:
        api.create_repo("alice/watercolor-lora")
    assert existing.value.response.status_code == 409
    assert api.create_repo("alice/watercolor-lora", exist_ok=True).repo_id == "alice/watercolor-lora"
    with pytest.raises(HfHubHTTPError) as foreign:
        api.create_repo("bob/mine")
    assert foreign.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as read_only:
        HfApi(endpoint=hub.endpoint, token="hf_bob_token").upload_file(
            path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="bob/ink-lora")
    assert read_only.value.response.status_code == 403
    assert hub.commits["bob/ink-lora"] == []


def test_invalid_card_yaml_is_refused_before_upload(hub: HubStandIn) -> None:
    api = HfApi(endpoint=hub.endpoint, token=ALICE)
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(path_or_fileobj=b"---\nkey: [unclosed\n---\n", path_in_repo="README.md",
                        repo_id="alice/watercolor-lora")
    assert hub.commits["alice/watercolor-lora"] == []


def test_upload_folder_takes_the_regular_path(hub: HubStandIn, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "lora.safetensors").write_bytes(safetensors_bytes(1))
    (folder / "README.md").write_text(CARD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api = HfApi(endpoint=hub.endpoint, token=ALICE)
        api.create_repo("studio/team")
        api.upload_folder(folder_path=folder, repo_id="studio/team")
    assert api.list_repo_files("studio/team") == [".gitattributes", "README.md", "lora.safetensors"]
    assert not [r for r in hub.requests if "xet" in r.path or "lfs" in r.path]


@pytest.mark.parametrize(
    ("repo_id", "filename", "token", "error"),
    [
        ("dana/gated-lora", "g.safetensors", False, GatedRepoError),
        ("dana/gated-lora", "g.safetensors", ALICE, GatedRepoError),
        ("nobody/missing", "x.safetensors", False, RepositoryNotFoundError),
        ("nobody/missing", "x.safetensors", ALICE, RepositoryNotFoundError),
        ("alice/secret-lora", "s.safetensors", False, RepositoryNotFoundError),
        ("alice/watercolor-lora", "missing.safetensors", False, EntryNotFoundError),
    ],
)
def test_download_errors_have_the_hub_types(
    hub: HubStandIn, tmp_path: Path, repo_id: str, filename: str, token: str | bool, error: type[Exception]
) -> None:
    with pytest.raises(error):
        hf_hub_download(repo_id, filename, endpoint=hub.endpoint, token=token, cache_dir=tmp_path / "cache")


def test_gated_repo_opens_once_access_is_granted(hub: HubStandIn, tmp_path: Path) -> None:
    hub.grant_access("dana/gated-lora", "alice")
    path = hf_hub_download("dana/gated-lora", "g.safetensors", endpoint=hub.endpoint, token=ALICE,
                           cache_dir=tmp_path / "cache")
    assert Path(path).stat().st_size == len(safetensors_bytes(4))
    assert anonymous(hub).model_info("dana/gated-lora").gated == "manual"  # metadata stays public


def test_model_info_errors_and_revisions(hub: HubStandIn) -> None:
    api = anonymous(hub)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/watercolor-lora", revision="v9")
    sha = api.model_info("alice/watercolor-lora").sha
    assert api.model_info("alice/watercolor-lora", revision=sha).sha == sha
    with pytest.raises(HfHubHTTPError) as bad_token:
        HfApi(endpoint=hub.endpoint, token="hf_wrong").model_info("alice/watercolor-lora")
    assert bad_token.value.response.status_code == 401
    assert "hf_wrong" not in str(bad_token.value)
