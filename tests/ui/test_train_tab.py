"""The Train tab's formatting, without a browser: settings widgets round-trip every preset, the report
escapes names taken from the zip, and the progress bar says where the job stands."""

from __future__ import annotations

from lora_space.train.config import TrainConfig, load_presets, merged, preset_values
from lora_space.ui.tabs.train import SETTING_KEYS, loss_figure, progress_html, report_markdown, sample_caption, settings_from_widgets, widget_values


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


def test_sample_captions_name_step_and_strength():
    assert sample_caption("/jobs/x/samples/step000200_prompt0_strength1.png") == "step 200 · prompt 1 · strength 1"
