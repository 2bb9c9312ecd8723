"""hub.py's write calls (create_repo, create_commit, delete_repo, repo_exists) against the stand-in."""

from __future__ import annotations

import pytest

from lora_space import hub
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
    where = {"endpoint": stand_in.endpoint, "token": TOKEN}
    assert not hub.repo_exists("alice/new", **where)
    created = hub.create_repo("alice/new", private=True, **where)
    assert created == hub.CreatedRepo("alice/new", f"{stand_in.endpoint}/alice/new")
    assert hub.repo_exists("alice/new", **where) and not hub.repo_exists("alice/new", endpoint=stand_in.endpoint, token=None)
    with pytest.raises(HubError, match="already exists"):
        hub.create_repo("alice/new", **where)
    commit = hub.create_commit("alice/new", {"README.md": b"---\nlicense: mit\n---\nhi\n", "a/b.txt": b"x"}, message="two files", **where)
    (received,) = stand_in.commits["alice/new"]
    assert commit == hub.Commit("alice/new", received.oid, f"{stand_in.endpoint}/alice/new/commit/{received.oid}")
    assert received.summary == "two files" and set(received.files) == {"README.md", "a/b.txt"}
    hub.delete_repo("alice/new", **where)
    hub.delete_repo("alice/new", **where)  # already gone: fine
    assert stand_in.deleted == ["alice/new"] and not hub.repo_exists("alice/new", **where)


def test_write_calls_say_what_went_wrong(stand_in):
    where = {"endpoint": stand_in.endpoint}
    with pytest.raises(HubError, match="Log in"):
        hub.create_repo("alice/x", token=None, **where)
    with pytest.raises(HubError, match="403"):
        hub.create_repo("alice/x", token="hf_reader", **where)
    with pytest.raises(HubError, match="offline"):
        hub.create_commit("alice/x", {"a.txt": b"a"}, token=TOKEN, message="m", offline=True, **where)
    hub.create_repo("alice/x", token=TOKEN, **where)
    with pytest.raises(HubError, match="refused the model card"):
        hub.create_commit("alice/x", {"README.md": b"---\ntags: [a\n---\n"}, token=TOKEN, message="m", **where)
    assert not stand_in.commits
