"""HubClient's write calls (create_repo, create_commit, delete_repo, repo_exists) against the stand-in."""

from __future__ import annotations

import pytest

from lora_space.hub.client import Commit, CreatedRepo, HubClient
from lora_space.core.errors import HubError
from tests.hub_standin import isolated_hub

TOKEN = "hf_writer_token_0a1b2c3d4e5f"


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as server:
        server.add_user("alice", token=TOKEN)
        server.add_user("alice", token="hf_reader", role="read")
        yield server


def test_create_commit_and_delete(stand_in):
    hub = HubClient(stand_in.endpoint, token=TOKEN)
    assert not hub.repo_exists("alice/new")
    created = hub.create_repo("alice/new", private=True)
    assert created == CreatedRepo("alice/new", f"{stand_in.endpoint}/alice/new")
    assert hub.repo_exists("alice/new") and not HubClient(stand_in.endpoint).repo_exists("alice/new")
    with pytest.raises(HubError, match="already exists"):
        hub.create_repo("alice/new")
    commit = hub.create_commit("alice/new", {"README.md": b"---\nlicense: mit\n---\nhi\n", "a/b.txt": b"x"}, message="two files")
    (received,) = stand_in.commits["alice/new"]
    assert commit == Commit("alice/new", received.oid, f"{stand_in.endpoint}/alice/new/commit/{received.oid}")
    assert received.summary == "two files" and set(received.files) == {"README.md", "a/b.txt"}
    hub.delete_repo("alice/new")
    hub.delete_repo("alice/new")  # already gone: fine
    assert stand_in.deleted == ["alice/new"] and not hub.repo_exists("alice/new")


def test_write_calls_say_what_went_wrong(stand_in):
    endpoint = stand_in.endpoint
    with pytest.raises(HubError, match="Log in"):
        HubClient(endpoint, token=None).create_repo("alice/x")
    with pytest.raises(HubError, match="403"):
        HubClient(endpoint, token="hf_reader").create_repo("alice/x")
    with pytest.raises(HubError, match="offline"):
        HubClient(endpoint, offline=True, token=TOKEN).create_commit("alice/x", {"a.txt": b"a"}, message="m")
    HubClient(endpoint, token=TOKEN).create_repo("alice/x")
    with pytest.raises(HubError, match="refused the model card"):
        HubClient(endpoint, token=TOKEN).create_commit("alice/x", {"README.md": b"---\ntags: [a\n---\n"}, message="m")
    assert not stand_in.commits
