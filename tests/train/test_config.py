"""TrainConfig: the course's config.json as printed, checks that name the key, presets and guidance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_space.core.errors import LoraSpaceError, TrainConfigError
from lora_space.core.settings import FLUX_DEV
from lora_space.train.config import TrainConfig, merged
from lora_space.train.presets import (
    default_preset,
    guidance,
    load_presets,
    preset_values,
)

REPO = Path(__file__).resolve().parents[2]
COURSE = json.loads((REPO / "examples" / "config.json").read_text())


def test_the_course_config_as_printed_reads_in_tiny_mode_with_notes():
    config = TrainConfig.from_dict(COURSE, is_tiny=True, bnb_available=False)
    assert config.model_name == "tiny"
    assert (config.resolution, config.train_batch_size, config.max_train_steps) == (1024, 2, 1000)
    assert (config.learning_rate, config.lr_scheduler, config.lr_warmup_steps) == (0.0005, "cosine", 100)
    assert (config.network_dim, config.network_alpha, config.lora_scale) == (32, 16.0, 0.5)
    assert config.optimizer_type == "AdamW"  # AdamW8bit fell back ...
    assert any("AdamW8bit" in note and "AdamW" in note for note in config.notes)  # ... and the report says so
    assert any("flux-dev-v1" in note for note in config.notes)


def test_flux_dev_v1_means_flux_dev_and_8bit_stays_where_bitsandbytes_runs():
    config = TrainConfig.from_dict(COURSE, is_tiny=False, bnb_available=True)
    assert config.model_name == FLUX_DEV
    assert config.optimizer_type == "AdamW8bit"
    assert config.notes == []


def test_a_quantised_base_falls_back_with_a_note_where_bitsandbytes_cannot_run():
    config = TrainConfig.from_dict({"quantize_base": "nf4"}, is_tiny=False, bnb_available=False)
    assert config.quantize_base == "none"
    assert any("nf4" in note for note in config.notes)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"learning_rate": -0.001}, "learning_rate"),
        ({"network_dim": 0}, "network_dim"),
        ({"optimizer_type": "SGD"}, "optimizer_type"),
        ({"lr_scheduler": "exponential"}, "lr_scheduler"),
        ({"max_train_steps": "many"}, "max_train_steps"),
        ({"max_train_steps": 10.5}, "max_train_steps"),
        ({"resolution": 1000}, "resolution"),
        ({"resolution": "1024,768"}, "resolution"),
        ({"lr_warmup_steps": 50, "max_train_steps": 10}, "lr_warmup_steps"),
        ({"validation_split": 0.9}, "validation_split"),
        ({"network_alpha": 0}, "network_alpha"),
        ({"gradient_checkpointing": "maybe"}, "gradient_checkpointing"),
        ({"quantize_base": "int3"}, "quantize_base"),
        ({"learning_rate": True}, "learning_rate"),
        ({"epochs": 10}, "'epochs'"),
        ({"rank": 8, "network_dim": 16}, "network_dim"),
    ],
)
def test_a_bad_value_is_an_error_that_names_its_key(values, named):
    with pytest.raises(TrainConfigError) as caught:
        TrainConfig.from_dict(values, is_tiny=True)
    assert named in str(caught.value)
    assert isinstance(caught.value, LoraSpaceError)


def test_every_problem_is_named_at_once():
    with pytest.raises(TrainConfigError) as caught:
        TrainConfig.from_dict({"learning_rate": -1, "network_dim": 0, "optimizer_type": "Lion"}, is_tiny=True)
    message = str(caught.value)
    assert "learning_rate" in message and "network_dim" in message and "optimizer_type" in message


def test_direct_construction_is_checked_too():
    with pytest.raises(TrainConfigError, match="network_dim"):
        TrainConfig(network_dim=0)
    with pytest.raises(TrainConfigError, match="resolution"):
        TrainConfig(resolution="1024")  # type: ignore[arg-type]


def test_kohya_and_diffusers_spellings_and_string_numbers_are_read():
    config = TrainConfig.from_dict(
        {"rank": 8, "lora_alpha": 4, "optimizer": "adamw", "max_steps": "300", "resolution": "512,512", "lr_scheduler": "Cosine", "save_every_n_steps": 100},
        is_tiny=True,
    )
    assert (config.network_dim, config.network_alpha, config.optimizer_type) == (8, 4.0, "AdamW")
    assert (config.max_train_steps, config.resolution, config.lr_scheduler, config.checkpoint_every) == (300, 512, "cosine", 100)


def test_merged_call_keys_win_over_the_zip_config():
    zip_config = {"max_train_steps": 500, "network_dim": 8, "trigger_word": "zipword"}
    config = merged(zip_config, {"max_steps": 30, "trigger_word": "callword"}, is_tiny=True)
    assert (config.max_train_steps, config.network_dim, config.trigger_word) == (30, 8, "callword")
    assert merged(None, None, is_tiny=True) == TrainConfig.from_dict({}, is_tiny=True)


def test_a_config_that_is_not_an_object_is_refused():
    with pytest.raises(TrainConfigError, match="JSON object"):
        merged(None, ["max_train_steps", 5], is_tiny=True)  # type: ignore[arg-type]
    with pytest.raises(TrainConfigError, match="JSON object"):
        TrainConfig.from_dict("max_train_steps=5", is_tiny=True)  # type: ignore[arg-type]


def test_a_bad_key_says_which_source_it_came_from():
    with pytest.raises(TrainConfigError, match="zip's config.json.*'epoch'"):
        merged({"epoch": 3}, {}, is_tiny=True)
    with pytest.raises(TrainConfigError, match="call's config.*'steps_total'"):
        merged({}, {"steps_total": 3}, is_tiny=True)


def test_to_dict_round_trips():
    config = TrainConfig.from_dict({"network_dim": 8, "validation_prompts": ["a red circle"], "seed": 7}, is_tiny=True)
    values = config.to_dict()
    assert "notes" not in values
    assert json.loads(json.dumps(values)) == values
    assert TrainConfig.from_dict(values, is_tiny=True) == config


def test_every_preset_is_a_valid_config_and_every_setting_has_guidance():
    presets = load_presets()
    for name in presets["presets"]:
        values = preset_values(name)
        for is_tiny in (True, False):
            TrainConfig.from_dict(values, is_tiny=is_tiny, bnb_available=False)
    for key in TrainConfig.setting_names():
        assert guidance(key), f"presets.json has no guidance for {key}"
    assert preset_values(default_preset(True))["resolution"] == 64
    low = preset_values("low memory (24 GB card)")
    assert (low["quantize_base"], low["optimizer_type"], low["gradient_checkpointing"], low["resolution"]) == ("nf4", "AdamW8bit", True, 512)
    course = preset_values(default_preset(False))
    assert (course["network_dim"], course["network_alpha"], course["learning_rate"], course["lr_scheduler"]) == (16, 8, 0.0001, "cosine")
    with pytest.raises(TrainConfigError, match="no preset"):
        preset_values("fastest")
