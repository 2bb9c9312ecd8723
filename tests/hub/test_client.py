"""`lora_space.hub` against the Hub stand-in, over real HTTP: reads, write calls, and whose token each carries."""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.utils._http
import pytest

from lora_space.core.errors import HubError, LoraFileError, UnsafeFileError
from lora_space.core.settings import Settings
from lora_space.hub.cards import trigger_words_from_card
from lora_space.hub.client import Commit, CreatedRepo, HubClient, pick_weight_file
from lora_space.library.base import current_base
from lora_space.library.inspect import inspect_source
from tests.hub_standin import HubStandIn, isolated_hub, safetensors_bytes
from tests.lora_factory import write_lora

FLUX = "black-forest-labs/FLUX.1-dev"
ALICE = "hf_alice_secret_token"
SPACE_TOKEN = "hf_space_OWNER_token_text_0f1e2d3c4b"
CARD = (
    f"---\nbase_model: {FLUX}\ninstance_prompt: wtrclr\ntags: [lora]\n"
    "widget:\n- text: a wtrclr painting of a fox\n---\n# Watercolor\n"
)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    with isolated_hub(tmp_path, monkeypatch) as stand_in:
        stand_in.add_user("alice", token=ALICE)
        stand_in.add_model("alice/watercolor-lora", files={
            "watercolor-lora.safetensors": safetensors_bytes(3, tensor_bytes=1024),
            "samples/big.safetensors": safetensors_bytes(1, tensor_bytes=1 << 20),
            "README.md": CARD,
        })
        stand_in.add_model("dana/gated-lora", files={"g.safetensors": safetensors_bytes(2)}, gated="auto")
        yield stand_in


def header_of(data: bytes) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + length]


def test_header_of_a_20_mb_file_costs_one_small_ranged_read(hub: HubStandIn) -> None:
    data = safetensors_bytes(4, tensor_bytes=5 * 1024 * 1024, metadata={"ss_network_dim": "16"})
    hub.add_model("alice/big-lora", files={"big.safetensors": data})
    hub.reset_log()
    header, size = HubClient(hub.endpoint).read_header("alice/big-lora", "big.safetensors")
    assert header == header_of(data) and size == len(data) > 20_000_000
    assert json.loads(header)["__metadata__"] == {"ss_network_dim": "16"}
    assert [(r.method, r.status, r.range) for r in hub.requests] == [("GET", 206, "bytes=0-100000")]
    assert hub.bytes_served() < 1_000_000


def test_a_header_over_100_kb_takes_a_second_ranged_read(hub: HubStandIn) -> None:
    data = safetensors_bytes(1000)
    assert len(header_of(data)) > 100_000
    hub.add_model("alice/many-lora", files={"many.safetensors": data})
    hub.reset_log()
    header, size = HubClient(hub.endpoint).read_header("alice/many-lora", "many.safetensors")
    assert header == header_of(data) and size == len(data)
    assert len(json.loads(header)) == 1000
    assert [r.range for r in hub.requests] == ["bytes=0-100000", f"bytes=100001-{len(header) + 7}"]
    assert hub.bytes_served() == len(header) + 8


def test_a_server_ignoring_range_is_read_only_as_far_as_needed(hub: HubStandIn) -> None:
    data = safetensors_bytes(4, tensor_bytes=16 * 1024 * 1024)
    hub.add_model("alice/huge-lora", files={"huge.safetensors": data})
    hub.honour_ranges = False
    hub.reset_log()
    header, size = HubClient(hub.endpoint).read_header("alice/huge-lora", "huge.safetensors")
    assert header == header_of(data) and size == len(data)
    assert [r.status for r in hub.requests] == [200]
    assert hub.bytes_served() < len(data) // 2  # the client hung up; only socket buffers were filled


def test_an_oversized_header_is_refused_before_it_is_fetched(hub: HubStandIn) -> None:
    claims_200_mb = struct.pack("<Q", 200 * 1024 * 1024) + b"{" + bytes(200_000)
    many = safetensors_bytes(1000)
    hub.add_model("alice/odd-lora", files={"odd.safetensors": claims_200_mb, "many.safetensors": many})
    hub.reset_log()
    with pytest.raises(UnsafeFileError, match="claims 209715200 bytes, more than the 4 MiB"):
        HubClient(hub.endpoint).read_header("alice/odd-lora", "odd.safetensors")
    with pytest.raises(UnsafeFileError, match="above the 50000-byte limit"):
        HubClient(hub.endpoint).read_header("alice/odd-lora", "many.safetensors", max_header_bytes=50_000)
    assert len(hub.requests) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "only 0 bytes long"),
        (b"12345", "only 5 bytes long"),
        (struct.pack("<Q", 5000) + b"{}", "truncated"),
    ],
)
def test_files_that_are_not_safetensors_are_refused(hub: HubStandIn, content: bytes, message: str) -> None:
    hub.add_model("alice/broken", files={"bad.safetensors": content})
    with pytest.raises(LoraFileError, match=message):
        HubClient(hub.endpoint).read_header("alice/broken", "bad.safetensors")


@pytest.mark.parametrize(
    ("repo_id", "filename", "token", "message"),
    [
        ("nobody/missing", "x.safetensors", None, "No repo nobody/missing on the Hub; check the id"),
        ("dana/gated-lora", "g.safetensors", None, "dana/gated-lora is gated: accept its licence on the Hub and log"),
        ("dana/gated-lora", "g.safetensors", ALICE, "dana/gated-lora is gated"),
        ("alice/watercolor-lora", "nope.safetensors", None, "No file nope.safetensors in alice/watercolor-lora"),
        ("alice/watercolor-lora", "watercolor-lora.safetensors", "hf_wrong_secret", "refused the token"),
        ("a/b/c", "x.safetensors", None, "'a/b/c' is not a Hub repo id"),
    ],
)
def test_hub_errors_become_hub_errors_without_tokens(
    hub: HubStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    repo_id: str, filename: str, token: str | None, message: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    for call in (
        lambda: HubClient(hub.endpoint, token=token).read_header(repo_id, filename),
        lambda: HubClient(hub.endpoint, token=token).download(repo_id, filename, cache_dir=tmp_path),
    ):
        with pytest.raises(HubError, match=message) as caught:
            call()
        assert token is None or token not in str(caught.value)
    assert token is None or token not in caplog.text


def test_an_unreachable_hub_is_named_in_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    expected = f"Cannot reach the Hub at {endpoint}"
    with pytest.raises(HubError, match=expected):
        HubClient(endpoint).read_header("alice/x", "x.safetensors")
    with pytest.raises(HubError, match=expected):
        HubClient(endpoint).card_data("alice/x")
    # With nothing cached, hf_hub_download retries the HEAD 5 times (1+2+4+8+8 s of sleep) first.
    sleeps: list[float] = []
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", sleeps.append)
    with pytest.raises(HubError, match=expected):
        HubClient(endpoint).download("alice/x", "x.safetensors", cache_dir=tmp_path)
    assert sleeps == [1, 2, 4, 8, 8]


def test_hub_outages_are_reported_with_their_status(
    hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", lambda seconds: None)
    hub.outage = 503
    with pytest.raises(HubError, match=f"The Hub at {hub.endpoint} answered HTTP 503"):
        HubClient(hub.endpoint).read_header("alice/watercolor-lora", "x.safetensors")
    # hf_hub_download hides the HTTP error behind "cannot find the file in the cache": it is unwrapped.
    with pytest.raises(HubError, match="answered HTTP 503 for alice/watercolor-lora/README.md"):
        HubClient(hub.endpoint).download("alice/watercolor-lora", "README.md", cache_dir=tmp_path)


def test_offline_calls_refuse_before_any_request(hub: HubStandIn, tmp_path: Path) -> None:
    endpoint = hub.endpoint
    hub.reset_log()
    calls = [
        lambda: HubClient(endpoint, offline=True).read_header("alice/watercolor-lora", "x.safetensors"),
        lambda: HubClient(endpoint, offline=True).weight_files("alice/watercolor-lora"),
        lambda: HubClient(endpoint, offline=True).card_data("alice/watercolor-lora"),
        lambda: HubClient(endpoint, offline=True, token=ALICE).whoami(),
    ]
    for call in calls:
        with pytest.raises(HubError, match=f"Cannot reach the Hub at {endpoint} .*offline"):
            call()
    with pytest.raises(HubError, match="not in the local cache and the app is offline"):
        HubClient(endpoint, offline=True).download("alice/watercolor-lora", "README.md", cache_dir=tmp_path)
    assert hub.requests == []


def test_download_file_fetches_then_serves_offline_from_the_cache(hub: HubStandIn, tmp_path: Path) -> None:
    name = "watercolor-lora.safetensors"
    path = HubClient(hub.endpoint).download("alice/watercolor-lora", name, cache_dir=tmp_path)
    assert path.read_bytes() == hub.file_bytes("alice/watercolor-lora", name)
    hub.reset_log()
    again = HubClient(hub.endpoint, offline=True).download("alice/watercolor-lora", name, cache_dir=tmp_path)
    assert again == path and hub.requests == []


@pytest.mark.parametrize(
    ("filename", "error"),
    [("model.bin", UnsafeFileError), ("lora.ckpt", UnsafeFileError), ("train.py", LoraFileError)],
)
def test_download_file_refuses_other_files_without_asking(
    hub: HubStandIn, tmp_path: Path, filename: str, error: type[Exception]
) -> None:
    hub.reset_log()
    with pytest.raises(error, match=filename):
        HubClient(hub.endpoint).download("alice/watercolor-lora", filename, cache_dir=tmp_path)
    assert hub.requests == []


def test_list_and_pick_weight_files(hub: HubStandIn) -> None:
    files = HubClient(hub.endpoint).weight_files("alice/watercolor-lora")
    assert dict(files) == {
        "watercolor-lora.safetensors": len(safetensors_bytes(3, tensor_bytes=1024)),
        "samples/big.safetensors": len(safetensors_bytes(1, tensor_bytes=1 << 20)),
    }
    assert pick_weight_file("alice/watercolor-lora", files) == "watercolor-lora.safetensors"
    listed = HubClient(hub.endpoint).weight_file("alice/watercolor-lora")
    assert listed == "watercolor-lora.safetensors"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([("a.safetensors", 9), ("pytorch_lora_weights.safetensors", 1)], "pytorch_lora_weights.safetensors"),
        ([("big.safetensors", 9), ("Watercolor_LoRA.safetensors", 1)], "Watercolor_LoRA.safetensors"),
        ([("style-000004.safetensors", 5), ("style.safetensors", 5), ("b.safetensors", 4)], "style.safetensors"),
        ([("ckpt/huge.safetensors", 99), ("small.safetensors", 1), ("notes.txt", 500)], "small.safetensors"),
        ([("ckpt-1/a.safetensors", 1), ("ckpt-2/a.safetensors", 2)], "ckpt-2/a.safetensors"),
    ],
)
def test_pick_weight_file_rule(files: list[tuple[str, int]], expected: str) -> None:
    assert pick_weight_file("alice/watercolor-lora", files) == expected


def test_pick_weight_file_needs_a_safetensors_file() -> None:
    with pytest.raises(LoraFileError, match="alice/old has no .safetensors file"):
        pick_weight_file("alice/old", [("model.bin", 10)])


def test_model_card_data_and_trigger_words(hub: HubStandIn) -> None:
    card = HubClient(hub.endpoint).card_data("alice/watercolor-lora")
    assert card["base_model"] == FLUX and card["instance_prompt"] == "wtrclr"
    assert trigger_words_from_card(card) == ["wtrclr"]
    assert HubClient(hub.endpoint).card_data("dana/gated-lora") == {}


@pytest.mark.parametrize(
    ("card", "expected"),
    [
        ({"instance_prompt": "a photo of TOK", "widget": [{"text": "TOK on a beach"}]}, ["a photo of TOK"]),
        ({"trigger_words": ["ink", "sumi-e"], "trigger_word": "ink"}, ["ink", "sumi-e"]),
        ({"trigger": "neon, synthwave ,", "instance_prompt": None}, ["neon", "synthwave"]),
        ({"instance_prompt": ["TOK", 3], "trigger_words": "TOK"}, ["TOK"]),
        ({"widget": [{"text": "only an example"}]}, []),
    ],
)
def test_trigger_words_from_card(card: dict[str, object], expected: list[str]) -> None:
    assert trigger_words_from_card(card) == expected


def test_whoami(hub: HubStandIn) -> None:
    assert HubClient(hub.endpoint, token=ALICE).whoami()["name"] == "alice"
    with pytest.raises(HubError, match="refused the token") as caught:
        HubClient(hub.endpoint, token="hf_wrong_secret").whoami()
    assert "hf_wrong_secret" not in str(caught.value)
    hub.reset_log()
    with pytest.raises(HubError, match="Log in"):
        HubClient(hub.endpoint, token=None).whoami()
    assert hub.requests == []


# --------------------------------------------------------------------------------------------------
# hub.py's write calls (create_repo, create_commit, delete_repo, repo_exists) against the stand-in.
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


def test_the_spaces_hf_token_is_never_sent_for_a_visitors_read(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as hub:
        hub.add_user("space-owner", token=SPACE_TOKEN)
        monkeypatch.setenv("HF_TOKEN", SPACE_TOKEN)  # the Space's own token, for its base model only
        flux = json.loads((Path(__file__).resolve().parents[2] / "lora_space" / "lora" / "base_models.json").read_text())["flux"][0]
        hub.add_model("acme/flux-variant", files={"transformer/config.json": json.dumps(flux["transformer"]),
                                                  "text_encoder/config.json": json.dumps(flux["text_encoder"]),
                                                  "README.md": "---\nlicense: other\n---\n"})
        lora = write_lora(tmp_path / "made" / "style.safetensors", 4)
        hub.add_model("alice/style", files={"style.safetensors": lora, "README.md": "---\ninstance_prompt: stl\n---\n"})
        settings = Settings.from_env({"LORA_SPACE_BASE_MODEL": "acme/flux-variant", "LORA_SPACE_LORA_DIR": str(tmp_path / "loras"),
                                      "LORA_SPACE_DATA_DIR": str(tmp_path / "data"), "HF_ENDPOINT": hub.endpoint})
        endpoint = hub.endpoint
        hub.reset_log()
        # The read the issue found (lora/shapes.py): the base's configs, for a visitor without a login.
        assert current_base(settings, token=None).name == "acme/flux-variant"
        report = inspect_source("alice/style", settings=settings, token=None)
        assert report.trigger_words == ["stl"] and not [warning for warning in report.warnings if "could not be read" in warning]
        # Every read of the Hub layer, called with no token.
        HubClient(endpoint, token=None).read_header("alice/style", "style.safetensors")
        HubClient(endpoint, token=None).download("alice/style", "style.safetensors", max_bytes=2**20)
        HubClient(endpoint, token=None).repo_commit("alice/style")
        HubClient(endpoint, token=None).card_data("alice/style")
        HubClient(endpoint, token=None).weight_file("alice/style")
        assert HubClient(endpoint, token=None).repo_exists("alice/style")
        HubClient(endpoint, token=None).search_loras(FLUX)
        HubClient(endpoint, token=None).model_details("alice/style")
        HubClient(endpoint, token=None).read_text("alice/style", "README.md")
        requests = hub.requests
    assert len(requests) >= 12 and {request.path for request in requests} >= {
        "/acme/flux-variant/resolve/main/transformer/config.json", "/api/models/alice/style", "/api/models",
    }
    assert {request.user for request in requests} == {None}, [(r.path, r.user) for r in requests if r.user]
