"""The model card: YAML the Hub reads whatever the names hold, Markdown that shows them literally."""

from __future__ import annotations

import pytest
import yaml

from lora_space.core.errors import PublishError
from lora_space.publish.card import (
    CardFacts,
    CardImage,
    TrainingFacts,
    card_metadata,
    md_code,
    md_text,
    parse_card,
    render_card,
)

FLUX_DEV = "black-forest-labs/FLUX.1-dev"


def facts(**changes) -> CardFacts:
    values = dict(repo_id="alice/ink-flux", title="ink", base_model=FLUX_DEV,
                  weight_file="pytorch_lora_weights.safetensors", trigger_words=("inkstyle",))
    return CardFacts(**(values | changes))


def test_names_and_captions_cannot_break_the_yaml_or_the_markdown():
    hostile = 'x: y\n---\nlicense: mit\n<script>alert(1)</script> [click](http://evil) `code` *bold* # head'
    card = render_card(facts(
        title=hostile,
        trigger_words=("ink: style", "--- #"),
        images=(CardImage("images/sample_01.png", hostile),),
        description=hostile,
    ))
    data = parse_card(card)
    assert data["license"] == "other"  # the caption's "license: mit" stayed inside its string
    assert data["instance_prompt"] == "ink: style, --- #"
    assert data["widget"][0]["text"] == " ".join(hostile.split())
    body = card.split("\n---\n", 1)[1]
    assert "<script>" not in body and "&lt;script&gt;" in body
    assert "[click](http://evil)" not in body and "\\[click\\]" in body
    assert body.count("\n---\n") == 0  # no second YAML-looking block in the body


def test_markdown_escapes_show_text_literally():
    assert md_text("<b>*x*</b> [a](b) _y_") == "&lt;b&gt;\\*x\\*&lt;/b&gt; \\[a\\](b) \\_y\\_"
    assert md_text("- item") == "\\- item" and md_text("1. first") == "1\\. first"
    assert md_code("a`b") == "``a`b``" and md_code("`x") == "`` `x ``"


def test_the_licence_is_the_base_models_unless_one_is_chosen():
    inherited = card_metadata(facts())
    assert (inherited["license"], inherited["license_name"]) == ("other", "flux-1-dev-non-commercial-license")
    schnell = card_metadata(facts(base_model="black-forest-labs/FLUX.1-schnell"))
    assert schnell["license"] == "apache-2.0" and "license_name" not in schnell
    chosen = card_metadata(facts(license="cc-by-nc-4.0"))
    assert chosen["license"] == "cc-by-nc-4.0" and "license_name" not in chosen
    assert "FLUX.1-dev" in render_card(facts(license="cc-by-nc-4.0")).split("## Licence")[1]  # still names the base's terms
    with pytest.raises(PublishError, match="not a Hub licence id"):
        facts(license="My License: do what you want")


def test_the_body_has_what_a_user_of_the_lora_needs():
    card = render_card(facts(
        training=TrainingFacts(images=18, steps=800, rank=16, alpha=8.0, learning_rate=1e-4, optimizer="AdamW",
                               resolution=1024, train_loss=0.0812, val_loss=0.0934),
        extra_files=("ink-flux-kohya.safetensors",),
    ))
    body = card.split("\n---\n", 1)[1]
    assert "Use `inkstyle` in the prompt" in body
    assert "**0.6 to 1**" in body  # the recommended strength range
    assert 'pipe.load_lora_weights("alice/ink-flux", weight_name="pytorch_lora_weights.safetensors"' in body
    assert "<lora:alice/ink-flux:0.8>" in body and "<lora:ink-flux-kohya:0.8> inkstyle" in body
    for row in ("| training images | 18 |", "| steps | 800 |", "| rank (network_dim) | 16 |", "| alpha (network_alpha) | 8 |",
                "| learning rate | 1.00e-04 |", "| optimizer | AdamW |", "| resolution | 1024 |",
                "| final training loss | 0.0812 |", "| final validation loss | 0.0934 |"):
        assert row in body
    assert "hold the rights to use every training" in body  # the course's "Training Data Rights"
    assert "## Training\n" not in render_card(facts())  # no training table without a training job


def test_a_card_without_a_valid_yaml_block_is_refused():
    with pytest.raises(PublishError, match="no YAML block"):
        parse_card("# just a title\n")
    with pytest.raises(PublishError, match="does not parse"):
        parse_card("---\ntags: [a\n---\n")
    with pytest.raises(PublishError, match="mapping"):
        parse_card("---\n- a\n- b\n---\n")
    assert parse_card(render_card(facts())) == yaml.safe_load(render_card(facts()).split("---\n")[1])
