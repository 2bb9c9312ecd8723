"""The Train tab's formatting, without a browser: settings widgets round-trip every preset, the report
escapes names taken from the zip, and the progress bar says where the job stands."""

from __future__ import annotations

from lora_space.train.config import TrainConfig, merged
from lora_space.train.presets import load_presets, preset_description, preset_values
from lora_space.train.session import smoothed_rate
from lora_space.ui.tabs.train_view import (
    SETTING_KEYS,
    loss_figure,
    progress_html,
    recheck_report,
    report_markdown,
    sample_caption,
    setting_changes,
    settings_from_widgets,
    widget_values,
)  # fmt: skip


def test_every_preset_goes_through_the_widgets_and_back_unchanged():
    for name in load_presets()["presets"]:
        config = merged(preset_values(name), None, is_tiny=True, bnb_available=False)
        values = widget_values(config.to_dict())
        assert len(values) == len(SETTING_KEYS)
        again = TrainConfig.from_dict(settings_from_widgets(config.trigger_word, values), is_tiny=True, bnb_available=False)
        assert again == config, name


def test_the_report_escapes_names_from_the_zip():
    report = {
        "images_used": 1, "images_found": 2, "layout": "flat pairs", "captions_matched": 1,
        "skipped": [{"file": "<img src=x onerror=alert(1)>.jpg", "reason": "not a readable image"}],
        "images_without_captions": ["<script>x</script>"],
    }  # fmt: skip
    text = report_markdown(report)
    assert "<img" not in text and "<script>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg: not a readable image" in text
    assert "**1 images** used of 2 found" in text


def test_progress_says_step_queue_and_eta():
    text = progress_html({"state": "running", "step": 5, "total_steps": 20, "eta_seconds": 75.4})
    assert 'value="5" max="20"' in text and "running · step 5 / 20 · ETA 1:15" in text
    assert "place 2 in the queue" in progress_html({"state": "queued", "step": 0, "total_steps": 20, "queue_position": 2})
    assert "ETA" not in progress_html({"state": "done", "step": 20, "total_steps": 20, "eta_seconds": 0})


def test_loss_figure_draws_train_and_validation():
    figure = loss_figure({"loss": [[1, 2.0], [2, 1.5], [3, 1.2]], "val_loss": [[3, 1.4]], "total_steps": 10})
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert list(lines["train"].get_ydata()) == [2.0, 1.5, 1.2]
    assert list(lines["validation"].get_xdata()) == [3] and lines["validation"].get_marker() == "o"  # one point still shows


def test_sample_captions_name_the_strength_in_full_first():
    assert sample_caption("/jobs/x/samples/step000200_prompt0_strength1.png") == "strength 1 · step 200 · prompt 1"
    assert sample_caption("/jobs/x/samples/step000010_prompt1_strength0.png").startswith("strength 0 · ")


def test_each_presets_description_says_what_its_fields_hold():
    """Issue 16, item 4: "low memory" promised nf4, 8-bit AdamW and checkpointing while the form showed
    none of them. The description now lists what the preset sets and what this machine changes."""
    for name, entry in load_presets()["presets"].items():
        for bnb in (False, True):
            text = preset_description(name, is_tiny=True, bnb_available=bnb)
            config = merged(preset_values(name), None, is_tiny=True, bnb_available=bnb)
            assert text.startswith(entry["description"]), name
            assert f"{config.resolution} px" in text and f"{config.max_train_steps} steps" in text, name
            assert f"rank {config.network_dim} (alpha {config.network_alpha:g})" in text, name
            assert config.optimizer_type in text and (config.quantize_base == "none" or config.quantize_base in text), name
            assert ("gradient checkpointing" in text) == config.gradient_checkpointing, name
            for note in config.notes:  # what the form shows instead of the preset's value, said in its words
                assert note in text, name
    low = preset_description("low memory (24 GB card)", is_tiny=True, bnb_available=False)
    assert "the base held in nf4" in low and "AdamW8bit" in low and "gradient checkpointing" in low
    assert "the base stays unquantised" in low and "training uses AdamW" in low  # the form shows none and AdamW here
    form = dict(zip(SETTING_KEYS, widget_values(merged(preset_values("low memory (24 GB card)"), None, is_tiny=True, bnb_available=False).to_dict())))
    assert (form["quantize_base"], form["optimizer_type"], form["gradient_checkpointing"]) == ("none", "AdamW", True)
    assert "On this machine" not in preset_description("low memory (24 GB card)", is_tiny=True, bnb_available=True)


def test_a_preset_lists_what_it_would_replace():
    tiny = widget_values(merged(preset_values("tiny quick try"), None, is_tiny=True, bnb_available=False).to_dict())
    zip_form = list(tiny)
    zip_form[SETTING_KEYS.index("learning_rate")] = 0.01
    zip_form[SETTING_KEYS.index("network_alpha")] = 2.0
    assert setting_changes(zip_form, tiny) == ["learning_rate 0.01 → 0.001", "network_alpha 2 → 4"]
    as_the_page_sends = [float(value) if isinstance(value, int) and not isinstance(value, bool) else value for value in tiny]
    assert setting_changes(as_the_page_sends, tiny) == []  # a number field's 64.0 is the preset's 64


def test_the_reports_caption_checks_run_again_on_edited_captions():
    first = {"images_used": 3, "images_found": 3, "layout": "flat pairs", "captions_matched": 2, "images_without_captions": ["c"],
             "trigger_word": "", "captions_missing_trigger": []}  # fmt: skip
    edited = recheck_report(first, {"a": "zq_style, a red circle", "b": "a blue square", "c": ""}, "zq_style")
    assert edited["captions_missing_trigger"] == ["b", "c"] and edited["images_without_captions"] == ["c"]
    text = report_markdown(edited)
    assert "missing the trigger word `zq_style`" in text and "(2): b, c" in text and "**2 captioned**" in text
    fixed = recheck_report(first, {"a": "zq_style, a red circle", "b": "zq_style, a blue square", "c": "zq_style"}, "zq_style")
    assert fixed["captions_missing_trigger"] == [] and fixed["images_without_captions"] == [] and fixed["captions_matched"] == 3
    assert "missing the trigger word" not in report_markdown(fixed) and "without captions" not in report_markdown(fixed)
    assert first["images_without_captions"] == ["c"]  # the upload's report is kept as it was


def test_the_eta_rate_is_smoothed_over_chunks():
    """One slow chunk (a sample drawn, a generation served first) moves the ETA's rate a little, not all the way."""
    assert smoothed_rate(None, 2.0, 5) == 2.0  # the first chunk is all there is
    slow = smoothed_rate(1.0, 10.0, 1)
    assert 1.0 < slow < 2.0
    settled = 1.0
    for _ in range(20):
        settled = smoothed_rate(settled, 3.0, 5)
    assert abs(settled - 3.0) < 0.01  # a lasting change is followed
    assert smoothed_rate(1.0, 3.0, 50) > smoothed_rate(1.0, 3.0, 2)  # a chunk of many steps weighs more
