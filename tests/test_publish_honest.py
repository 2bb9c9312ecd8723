"""Honest cards: a card names a base model only when every module of the LoRA fits it.

Cards are read back with huggingface_hub's own `ModelCard`, and the published LoRA with plain
diffusers, as someone who finds the repo would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from lora_space.core.errors import PublishError
from lora_space.lora.export import lora_tensors
from lora_space.lora.formats import LoraSet
from lora_space.lora.shapes import known_base, tiny_shapes
from lora_space.lora.synthetic import random_lora
from lora_space.publish.publish import PublishRequest, preview_card, publish
from lora_space.tiny.__main__ import save_tiny
from lora_space.visitors.owners import LOCAL
from tests.test_publish import TOKEN, hub, space  # noqa: F401  (the stand-in with alice; `ink`, a tiny-mode LoRA)

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

