"""Publishing to the Hub stand-in: one commit, a card the Hub reads, checks that refuse, no token leaks,
and honest cards (a card names a base model only when every module of the LoRA fits it)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import save_file

from lora_space.core.errors import HubError, PublishError
from lora_space.generate.recipe import read_png_recipe
from lora_space.lora.export import lora_tensors
from lora_space.lora.formats import LoraSet
from lora_space.lora.shapes import known_base, tiny_shapes
from lora_space.lora.synthetic import random_lora
from lora_space.publish.card import parse_card
from lora_space.publish.publish import (
    PublishRequest,
    preview_card,
    publish,
    user_token,
    writable_namespaces,
)
from lora_space.service import LoraSpace, Options
from lora_space.tiny.__main__ import save_tiny
from lora_space.visitors.owners import LOCAL, Visitor
from tests.hub_standin import isolated_hub
from tests.lora_factory import write_lora

TINY = Options(seed=7, steps=2, width=64, height=64)
TOKEN = "hf_alice_WRITE_token_9f8e7d6c5b4a"
READ_TOKEN = "hf_alice_READ_token_0123456789"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as stand_in:
        stand_in.add_user("alice", token=TOKEN, orgs=["acme"])
        stand_in.add_user("alice", token=READ_TOKEN, role="read")
        yield stand_in


@pytest.fixture
def space(online_settings, make_space) -> LoraSpace:
    write_lora(online_settings.lora_dir / "ink.safetensors", 1)
    (online_settings.lora_dir / "ink.txt").write_text("inkstyle")
    return make_space(online_settings)


@pytest.fixture
def portfolio(space) -> Path:
    """A Generate batch's portfolio zip: two PNGs made with the LoRA, each with its recipe."""
    return space.batch(["a harbour at dawn", "a cat: on a mat"], [{"source": "ink", "strength": 0.8}], TINY).archive


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_one_commit_holds_the_lora_the_card_the_images_and_the_reproducibility_file(space, hub, portfolio):
    request = PublishRequest(lora="ink", repo_id="alice/ink-flux", sample_images=(portfolio,), extra_formats=("kohya",))
    result = publish(space, request, token=TOKEN, visitor=LOCAL)

    (commit,) = hub.commits["alice/ink-flux"]
    assert set(commit.files) == {
        "pytorch_lora_weights.safetensors", "ink-flux-kohya.safetensors", "README.md",
        "images/sample_01.png", "images/sample_02.png", "reproducibility.json",
    }
    assert result.commit == commit.oid and result.url == f"{hub.endpoint}/alice/ink-flux"
    assert sorted(result.files) == sorted(commit.files)
    assert hub._repos["alice/ink-flux"].private  # private unless told otherwise
    # The card's YAML is what the Hub and the LoRA Spaces read. A LoRA of the tiny model (32 wide) fits no
    # FLUX.1 model: it is published as a test artefact that names no base model (see the honest-card tests at the end of this file).
    card = parse_card(commit.files["README.md"].decode())
    assert "base_model" not in card and card["license"] == "apache-2.0"
    assert {"text-to-image", "diffusers", "lora", "lora-space", "lora-space-tiny"} <= set(card["tags"])
    assert not any(tag.startswith("base_model:") for tag in card["tags"]) and "flux" not in card["tags"]
    assert card["instance_prompt"] == "inkstyle"
    assert card["widget"] == [
        {"text": "inkstyle, a harbour at dawn", "output": {"url": "images/sample_01.png"}},
        {"text": "inkstyle, a cat: on a mat", "output": {"url": "images/sample_02.png"}},
    ]
    # The images keep their recipes, now pointing at the published repo.
    sample = Path(hub.root) / "sample.png"
    sample.write_bytes(commit.files["images/sample_01.png"])
    (lora_ref,) = read_png_recipe(sample)["loras"]
    assert lora_ref["source"] == "alice/ink-flux" and lora_ref["strength"] == 0.8
    repro = json.loads(commit.files["reproducibility.json"])
    assert {"torch", "diffusers", "peft"} <= set(repro["versions"])
    assert repro["samples"][1]["recipe"]["seed"] == 7


def test_the_token_goes_only_in_the_authorization_header(space, hub, portfolio, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    request = PublishRequest(lora="ink", repo_id="alice/ink-flux", sample_images=(portfolio,))
    publish(space, request, token=TOKEN, visitor=LOCAL)

    secret = TOKEN.encode()
    requests = hub.requests
    assert requests and all(r.user in (None, "alice") for r in requests)
    assert {r.user for r in requests if r.method == "POST"} == {"alice"}  # it did authenticate, by header
    for recorded in requests:
        assert TOKEN not in recorded.path and TOKEN not in json.dumps(recorded.query)
    for commit in hub.commits["alice/ink-flux"]:
        assert TOKEN not in commit.summary + commit.description + json.dumps(commit.operations)
        assert not any(secret in content for content in commit.files.values())
    blobs = list((Path(hub.root) / "blobs").iterdir())
    assert blobs and not any(secret in blob.read_bytes() for blob in blobs)
    assert TOKEN not in caplog.text
    # Nothing the app wrote holds it either (the staged files are gone).
    written = [path for path in space.settings.data_dir.rglob("*") if path.is_file()]
    assert not any(secret in path.read_bytes() for path in written)
    assert not list(space.settings.data_dir.glob("outputs/publish-*"))


@pytest.mark.parametrize(
    ("repo_id", "token", "expected"),
    [
        ("alice/ink-flux", READ_TOKEN, "read-only"),
        ("bob/ink-flux", TOKEN, "cannot write to 'bob'"),
        ("alice/bad--name", TOKEN, "not a valid Hub repo name"),
        ("alice/taken", TOKEN, "already exists"),
        ("ink-flux", TOKEN, "must be 'your-name/repo-name'"),
    ],
)
def test_refused_publishes_say_why_and_commit_nothing(space, hub, repo_id, token, expected):
    hub.add_model("alice/taken", files={"README.md": "---\nlicense: mit\n---\nmine\n"})
    hub.reset_log()
    with pytest.raises(PublishError, match=expected):
        publish(space, PublishRequest(lora="ink", repo_id=repo_id), token=token, visitor=LOCAL)
    assert not hub.commits
    assert not [r for r in hub.requests if r.path == "/api/repos/create"]
    assert hub.file_bytes("alice/taken", "README.md").endswith(b"mine\n")


def test_overwrite_commits_into_an_existing_repo(space, hub):
    hub.add_model("alice/ink-flux", files={"README.md": "old card\n", "notes.txt": "kept"})
    publish(space, PublishRequest(lora="ink", repo_id="alice/ink-flux", overwrite=True), token=TOKEN, visitor=LOCAL)
    (commit,) = hub.commits["alice/ink-flux"]
    assert "pytorch_lora_weights.safetensors" in commit.files
    assert hub.file_bytes("alice/ink-flux", "README.md").startswith(b"---\nlicense:")  # the new card
    assert hub.file_bytes("alice/ink-flux", "notes.txt") == b"kept"


def test_an_organisation_the_user_belongs_to_is_a_valid_namespace(space, hub):
    result = publish(space, PublishRequest(lora="ink", repo_id="acme/ink-flux", private=False), token=TOKEN, visitor=LOCAL)
    assert result.url.endswith("/acme/ink-flux") and not hub._repos["acme/ink-flux"].private


def test_a_fine_grained_token_writes_only_where_it_is_scoped(space, hub):
    hub.add_user("alice", token="hf_fine_grained_token_abc", orgs=["acme"],
                 scoped={"alice": ["repo.content.read", "repo.write"], "acme": ["repo.content.read"]})
    with pytest.raises(PublishError, match="cannot write to 'acme'"):
        publish(space, PublishRequest(lora="ink", repo_id="acme/ink-flux"), token="hf_fine_grained_token_abc", visitor=LOCAL)
    publish(space, PublishRequest(lora="ink", repo_id="alice/ink-flux"), token="hf_fine_grained_token_abc", visitor=LOCAL)
    assert len(hub.commits["alice/ink-flux"]) == 1 and not hub.commits.get("acme/ink-flux")


def test_a_failed_commit_removes_the_repo_it_created_and_says_why(space, hub):
    hub.commit_failure = 500
    with pytest.raises(HubError, match="nothing was published") as raised:
        publish(space, PublishRequest(lora="ink", repo_id="alice/ink-flux"), token=TOKEN, visitor=LOCAL)
    assert "HTTP 500" in str(raised.value) and TOKEN not in str(raised.value)
    assert hub.deleted == ["alice/ink-flux"] and "alice/ink-flux" not in hub._repos
    assert not hub.commits


def test_a_failed_commit_into_an_existing_repo_leaves_it_as_it_was(space, hub):
    hub.add_model("alice/ink-flux", files={"README.md": "old card\n"})
    hub.commit_failure = 503
    with pytest.raises(HubError, match="nothing was published"):
        publish(space, PublishRequest(lora="ink", repo_id="alice/ink-flux", overwrite=True), token=TOKEN, visitor=LOCAL)
    assert hub.file_bytes("alice/ink-flux", "README.md") == b"old card\n" and not hub.deleted


def test_the_published_lora_generates_the_same_image_as_the_local_file(space, hub):
    publish(space, PublishRequest(lora="ink", repo_id="alice/ink-flux"), token=TOKEN, visitor=LOCAL)
    local = space.generate("a lighthouse", [{"source": "ink", "strength": 0.9}], TINY)
    fetched = space.generate("a lighthouse", [{"source": "alice/ink-flux", "strength": 0.9}], TINY, token=TOKEN)
    assert fetched.metadata["prompt"] == local.metadata["prompt"] == "inkstyle, a lighthouse"  # trigger word from the card
    assert fetched.metadata["loras"][0]["revision"] == hub.commits["alice/ink-flux"][0].oid
    assert np.array_equal(pixels(local.files[0]), pixels(fetched.files[0]))
    base = space.generate("a lighthouse", [], TINY)
    assert not np.array_equal(pixels(base.files[0]), pixels(local.files[0]))  # the LoRA does change the image


def test_an_edited_card_is_published_as_written_and_a_broken_one_is_refused(space, hub):
    card = preview_card(space, PublishRequest(lora="ink", repo_id="alice/ink-flux"), visitor=LOCAL)
    edited = card.replace("# ink\n", "# Ink, my first LoRA\n")
    publish(space, PublishRequest(lora="ink", repo_id="alice/ink-flux", card=edited), token=TOKEN, visitor=LOCAL)
    assert hub.file_bytes("alice/ink-flux", "README.md").decode() == edited
    broken = "---\nbase_model: [unclosed\n---\nbody\n"
    with pytest.raises(PublishError, match="YAML block does not parse"):
        publish(space, PublishRequest(lora="ink", repo_id="alice/other", card=broken), token=TOKEN, visitor=LOCAL)
    with pytest.raises(PublishError, match="contains your Hub token"):
        publish(space, PublishRequest(lora="ink", repo_id="alice/other", card=card + TOKEN), token=TOKEN, visitor=LOCAL)
    with pytest.raises(PublishError, match="contains your Hub token"):
        publish(space, PublishRequest(lora="ink", repo_id="alice/other", description=f"made with {TOKEN}"), token=TOKEN, visitor=LOCAL)
    assert not hub.commits.get("alice/other")


def test_only_what_the_visitor_owns_is_published(space, hub, tmp_path):
    hub.add_model("bob/famous", files={"lora.safetensors": write_lora(tmp_path / "famous.safetensors", 3).read_bytes()})
    with pytest.raises(PublishError, match="looks like a Hub repo"):
        publish(space, PublishRequest(lora="bob/famous", repo_id="alice/famous"), token=TOKEN, visitor=LOCAL)
    outside = write_lora(tmp_path / "elsewhere" / "x.safetensors", 4)
    with pytest.raises(PublishError, match="No LoRA .* among yours"):
        publish(space, PublishRequest(lora=str(outside), repo_id="alice/x"), token=TOKEN, visitor=LOCAL)
    # On a Space the shared library is the Space owner's; a visitor publishes their own LoRAs.
    on_space = LoraSpace(dataclasses.replace(space.settings, on_space=True), space.engine)
    visitor = Visitor("hub", "alice")
    with pytest.raises(PublishError, match="shared library, which belongs to the Space's owner"):
        publish(on_space, PublishRequest(lora="ink", repo_id="alice/ink"), token=TOKEN, visitor=visitor)
    on_space.add_lora(write_lora(tmp_path / "mine.safetensors", 5), visitor=visitor, trigger_words=["minestyle"])
    publish(on_space, PublishRequest(lora="mine", repo_id="alice/mine"), token=TOKEN, visitor=visitor)
    assert parse_card(hub.file_bytes("alice/mine", "README.md").decode())["instance_prompt"] == "minestyle"
    assert not hub.commits.get("alice/ink") and not hub.commits.get("alice/x")
    # A file the visitor uploads in the Publish tab is theirs (kohya layout here: published as diffusers).
    from lora_space.library.tools import read_lora_file
    from lora_space.lora.export import save_lora

    uploaded = tmp_path / "gradio-upload" / "my_kohya.safetensors"
    uploaded.parent.mkdir()
    save_lora(read_lora_file(write_lora(tmp_path / "k.safetensors", 6)), uploaded, target="kohya")
    publish(on_space, PublishRequest(lora="", repo_id="alice/kohya", uploaded_file=uploaded), token=TOKEN, visitor=visitor)
    published = tmp_path / "back.safetensors"
    published.write_bytes(hub.file_bytes("alice/kohya", "pytorch_lora_weights.safetensors"))
    assert read_lora_file(published).format == "diffusers" and read_lora_file(uploaded).format == "kohya"


def test_a_path_outside_your_files_gets_one_answer_whether_it_exists_or_not(space, tmp_path):
    """Render the card (and /publish) must not tell which files exist on the server (issue 14, hole 7)."""
    elsewhere = write_lora(tmp_path / "elsewhere" / "x.safetensors", 4)  # a real LoRA, outside the visitor's folders
    on_space = LoraSpace(dataclasses.replace(space.settings, on_space=True), space.engine)
    for owner, visitor in ((space, LOCAL), (on_space, Visitor("hub", "alice"))):
        answers = set()
        for path in ("/etc/shadow", "/etc/passwd", "/etc/no-such-file", str(elsewhere), str(elsewhere.with_name("none.safetensors")), "~/x"):
            with pytest.raises(PublishError) as refused:
                preview_card(owner, PublishRequest(lora=path, repo_id="alice/x"), visitor=visitor)
            answers.add(str(refused.value).replace(repr(path), "PATH"))
        assert answers == {
            "No LoRA PATH among yours: give a training job id, a name in your library (see /list_loras), "
            "or upload the file in the Publish tab."
        }


def test_sample_images_that_are_not_images_are_refused(space, hub, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(PublishError, match="not a sample image"):
        publish(space, PublishRequest(lora="ink", repo_id="alice/ink", sample_images=(notes,)), token=TOKEN, visitor=LOCAL)
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG but not really")
    with pytest.raises(PublishError, match="not a readable image"):
        publish(space, PublishRequest(lora="ink", repo_id="alice/ink", sample_images=(fake,)), token=TOKEN, visitor=LOCAL)
    assert not hub.commits and not [r for r in hub.requests if r.path == "/api/repos/create"]


def test_the_token_is_the_callers_own():
    assert user_token("hf_oauth", "hf_typed", on_space=True, environment_token="hf_space") == "hf_oauth"
    with pytest.raises(PublishError, match="Sign in"):  # on a Space never the Space's own HF_TOKEN
        user_token(None, "hf_typed", on_space=True, environment_token="hf_space")
    assert user_token(None, "hf_typed", on_space=False, environment_token="hf_env") == "hf_typed"
    assert user_token(None, "", on_space=False, environment_token="hf_env") == "hf_env"
    with pytest.raises(PublishError, match="HF_TOKEN"):
        user_token("mock-oauth-token-for-local-dev", None, on_space=False)


def test_write_access_as_the_hub_reports_it():
    classic = {"name": "alice", "orgs": [{"name": "acme", "roleInOrg": "write"}, {"name": "club", "roleInOrg": "read"}],
               "auth": {"type": "access_token", "accessToken": {"role": "write"}}}
    assert writable_namespaces(classic) == ("alice", ["alice", "acme"])
    read = {**classic, "auth": {"type": "access_token", "accessToken": {"role": "read"}}}
    assert writable_namespaces(read) == ("alice", [])
    oauth = {"name": "alice", "orgs": [], "auth": {"type": "oauth"}}
    assert writable_namespaces(oauth, oauth_scope="openid profile read-repos") == ("alice", [])
    assert writable_namespaces(oauth, oauth_scope="openid profile write-repos manage-repos") == ("alice", ["alice"])


def test_a_finished_training_job_publishes_its_lora_samples_and_facts(online_settings, make_space, hub, tmp_path):
    from tests.train_factory import ACTIVE, TINY_RUN, colour_zip, wait_for_job

    space = make_space(online_settings, chunk_steps=3)
    config = {key: value for key, value in TINY_RUN.items() if key != "model_name"} | {
        "trigger_word": "redstyle", "max_train_steps": 6, "sample_every": 2}  # no validation prompts: a held-out caption
    started = space.jobs.start(colour_zip(tmp_path / "red.zip"), config, visitor=LOCAL)
    with pytest.raises(PublishError, match="once it is done"):
        publish(space, PublishRequest(lora=started.job_id, repo_id="alice/early"), token=TOKEN, visitor=LOCAL)
    status = wait_for_job(space, started.job_id, leaving=ACTIVE, timeout=60)
    assert status.state == "done", status.error
    result = publish(space, PublishRequest(lora=started.job_id, repo_id="alice/red-flux"), token=TOKEN, visitor=LOCAL)
    # By its library name, the job's LoRA keeps the job's facts too.
    publish(space, PublishRequest(lora=status.lora_name, repo_id="alice/red-by-name"), token=TOKEN, visitor=LOCAL)
    assert "| steps | 6 |" in hub.file_bytes("alice/red-by-name", "README.md").decode()

    (commit,) = hub.commits["alice/red-flux"]
    # Every sample the job kept with the LoRA on (steps 6, 4 and 2), not one; each carries its recipe.
    images = ["images/sample_01.png", "images/sample_02.png", "images/sample_03.png"]
    assert [name for name in result.files if name.startswith("images/")] == images
    card_text = commit.files["README.md"].decode()
    card = parse_card(card_text)
    assert card["instance_prompt"] == "redstyle"
    assert "base_model" not in card and "lora-space-tiny" in card["tags"]  # a tiny-mode job claims no FLUX.1 model
    assert [widget["output"] for widget in card["widget"]] == [{"url": name} for name in images]
    assert all(re.fullmatch(r"redstyle, a picture number \d", widget["text"]) for widget in card["widget"])
    from sd_parsers import ParserManager

    from tests.library.test_hashes import a1111_lora_hash

    published = tmp_path / "published.safetensors"
    published.write_bytes(commit.files["pytorch_lora_weights.safetensors"])
    for name, widget in zip(images, card["widget"]):
        info = ParserManager().parse(io.BytesIO(commit.files[name]))  # A1111 `parameters`, read by a reader nobody here wrote
        (sampler,) = info.samplers
        assert str(sampler.prompts[0]) == f"{widget['text']} <lora:{status.lora_name}:1>"
        assert (sampler.name, sampler.parameters["steps"], sampler.parameters["seed"]) == ("Euler", "20", "0")
        assert (sampler.model.name, info.metadata["Size"]) == ("tiny", "64x64")
        assert info.metadata["Hashes"] == {f"lora:{status.lora_name}": a1111_lora_hash(published)}  # Civitai links it
        (tmp_path / "published.png").write_bytes(commit.files[name])
        recipe = read_png_recipe(tmp_path / "published.png")
        assert [(lora["name"], lora["source"], lora["strength"]) for lora in recipe["loras"]] == [(status.lora_name, "alice/red-flux", 1.0)]
    # The trainer's own samples carry their recipes too, the base-model-alone ones at strength 0.
    zero = next(Path(item) for item in status.samples if str(item).endswith("step000006_prompt0_strength0.png"))
    assert str(ParserManager().parse(zero).samplers[0].prompts[0]).endswith(f"<lora:{status.lora_name}:0>")
    # 5 images trained on, 1 held out for the validation loss: the card shows both.
    for row in ("| training images | 5 |", "| validation images (held out) | 1 |", "| steps | 6 |", "| rank (network_dim) | 4 |", "| alpha (network_alpha) | 4 |",
                "| learning rate | 0.01 |", "| optimizer | AdamW |", "| resolution | 64 |",
                f"| final training loss | {status.loss[-1][1]:.4g} |"):
        assert row in card_text
    if status.val_loss:
        assert f"| final validation loss | {status.val_loss[-1][1]:.4g} |" in card_text
    repro = json.loads(commit.files["reproducibility.json"])
    assert repro["config"]["network_dim"] == 4 and repro["seed"] == 0 and len(repro["dataset_sha256"]) == 64
    assert started.job_id not in card_text + json.dumps(repro)  # the job id is a capability: never published
    # The published file is the job's LoRA, bit for bit in the diffusers layout.
    from lora_space.lora.safefile import load_lora_file

    mine, theirs = load_lora_file(status.lora_file)[0], load_lora_file(published)[0]
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)


# --------------------------------------------------------------------------------------------------
# Honest cards: a card names a base model only when every module of the LoRA fits it.
#
# Cards are read back with huggingface_hub's own `ModelCard`, and the published LoRA with plain
# diffusers, as someone who finds the repo would.
FLUX_DEV = "black-forest-labs/FLUX.1-dev"
DEV_MODULES = ["transformer.transformer_blocks.0.attn.to_q", "transformer.single_transformer_blocks.0.proj_out"]


def write_dev_lora(path: Path, modules: list[str] = DEV_MODULES) -> Path:
    """A small LoRA of FLUX.1-dev's shapes (rank 1 on two modules, ~100 KB)."""
    lora = random_lora(known_base(FLUX_DEV).modules, rank=1, seed=3, modules=modules)
    tensors, metadata, _ = lora_tensors(lora, "diffusers")
    save_file(tensors, str(path), metadata=metadata)
    return path


def card_of(hub, repo_id: str) -> ModelCard:
    return ModelCard(hub.file_bytes(repo_id, "README.md").decode())


def test_a_tiny_mode_lora_is_published_as_a_test_artefact_that_claims_no_flux_model(space, hub, tmp_path):
    result = publish(space, PublishRequest(lora="ink", repo_id="alice/ink-test", extra_formats=("kohya",)), token=TOKEN, visitor=LOCAL)
    card = card_of(hub, "alice/ink-test")
    data = card.data.to_dict()
    # No base model, no adapter tag, no FLUX licence or snippet; the tool and the test model are named.
    assert "base_model" not in data and "base_model_relation" not in data
    assert FLUX_DEV not in card.content.split("## Use it with diffusers")[1].split("## Training data")[0]
    assert {"lora", "lora-space", "lora-space-tiny", "test-artefact"} <= set(data["tags"])
    assert not any(tag.startswith("base_model:") for tag in data["tags"]) and "flux" not in data["tags"]
    assert data["license"] == "apache-2.0" and "license_name" not in data
    assert "A test artefact, not a FLUX.1 LoRA" in card.text and "32 wide" in card.text
    assert 'FluxPipeline.from_pretrained("tiny-flux")' in card.text and "A1111, Forge and ComfyUI have no tiny model" in card.text
    repro = json.loads(hub.file_bytes("alice/ink-test", "reproducibility.json"))
    assert repro["base_model"] == "tiny"
    assert len(result.notes) == 1 and "test artefact" in result.notes[0] and "(32 wide)" in result.notes[0]
    # The snippet's claim holds: plain diffusers loads the file into the tiny model, saved as the card says.
    from diffusers import FluxPipeline

    (tmp_path / "hub-file").mkdir()
    (tmp_path / "hub-file" / "pytorch_lora_weights.safetensors").write_bytes(hub.file_bytes("alice/ink-test", "pytorch_lora_weights.safetensors"))
    pipe = FluxPipeline.from_pretrained(str(save_tiny(tmp_path / "tiny-flux")))
    pipe.load_lora_weights(str(tmp_path / "hub-file"), weight_name="pytorch_lora_weights.safetensors", adapter_name="lora")
    assert pipe.get_list_adapters() == {"transformer": ["lora"]}
    ranks = {name: module.r["lora"] for name, module in pipe.transformer.named_modules() if hasattr(module, "r") and "lora" in module.r}
    assert len(ranks) == 6 and set(ranks.values()) == {4}  # the file's 6 modules, at rank 4


def test_a_flux_dev_lora_is_published_for_flux_dev_even_in_tiny_mode(space, hub):
    write_dev_lora(space.settings.lora_dir / "dev_style.safetensors")
    result = publish(space, PublishRequest(lora="dev_style", repo_id="alice/dev-style"), token=TOKEN, visitor=LOCAL)
    data = card_of(hub, "alice/dev-style").data.to_dict()
    assert data["base_model"] == FLUX_DEV and data["base_model_relation"] == "adapter"
    assert data["license"] == "other" and data["license_name"] == "flux-1-dev-non-commercial-license"
    assert {"flux", "template:sd-lora", "lora-space", f"base_model:adapter:{FLUX_DEV}"} <= set(data["tags"])
    assert "lora-space-tiny" not in data["tags"] and not result.notes
    assert json.loads(hub.file_bytes("alice/dev-style", "reproducibility.json"))["base_model"] == FLUX_DEV


def test_a_card_never_names_a_base_the_lora_does_not_fit(space, hub):
    # A file with a module of FLUX.1-dev and one of tiny fits neither: refused, with the module that does not fit.
    mixed = random_lora(known_base(FLUX_DEV).modules, rank=1, modules=DEV_MODULES[:1]).modules
    mixed |= random_lora(tiny_shapes().modules, rank=1, modules=["transformer.transformer_blocks.0.attn.to_k"]).modules
    tensors, metadata, _ = lora_tensors(LoraSet(modules=mixed, format="diffusers"), "diffusers")
    save_file(tensors, str(space.settings.lora_dir / "mixed.safetensors"), metadata=metadata)
    with pytest.raises(PublishError, match=r"mixed does not fit black-forest-labs/FLUX.1-dev: 1 of its 2 modules do not \(transformer.transformer_blocks.0.attn.to_k is 32x32 in the LoRA and 3072x3072"):
        publish(space, PublishRequest(lora="mixed", repo_id="alice/mixed"), token=TOKEN, visitor=LOCAL)
    # An edited card that claims FLUX.1-dev for the tiny LoRA is refused too; so is one for FLUX.1-schnell.
    card = preview_card(space, PublishRequest(lora="ink", repo_id="alice/ink"), visitor=LOCAL)
    for base in (FLUX_DEV, "black-forest-labs/FLUX.1-schnell"):
        claimed = card.replace("---\nlicense:", f"---\nbase_model: {base}\nlicense:", 1)
        with pytest.raises(PublishError, match=f"ink does not fit {base}: 6 of its 6 modules do not .* remove base_model from the card"):
            publish(space, PublishRequest(lora="ink", repo_id="alice/ink", card=claimed), token=TOKEN, visitor=LOCAL)
    assert not hub.commits

