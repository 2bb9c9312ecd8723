"""What the Train tab shows: the settings form's values, the dataset report (checked again after
caption edits), the progress bar, the loss plot, sample captions and the job list, as text, HTML
and figures. No events here; `ui/train.py` wires them."""

from __future__ import annotations

import html
from pathlib import Path

from matplotlib.figure import Figure

from lora_space.core.markdown_text import md_code, md_text
from lora_space.train.checkpoint import SampleName
from lora_space.train.dataset import has_word
from lora_space.train.status import ACTIVE

JOB_COLUMNS = ["job", "state", "progress", "LoRA"]
LOSS_COLOURS = {"train": "#2563eb", "validation": "#ea580c"}
# The settings shown beside the course's guidance, in this order (trigger_word sits with the captions).
SETTING_KEYS = [
    "resolution", "max_train_steps", "learning_rate", "lr_scheduler", "lr_warmup_steps", "train_batch_size",
    "network_dim", "network_alpha", "optimizer_type", "validation_split", "sample_every", "checkpoint_every",
    "seed", "gradient_checkpointing", "cache_latents", "mixed_precision", "quantize_base", "validation_prompts",
]  # fmt: skip


def widget_values(config: dict) -> list:
    return ["\n".join(config.get(key) or []) if key == "validation_prompts" else config.get(key) for key in SETTING_KEYS]


def settings_from_widgets(trigger_word: str, values) -> dict:
    config = {key: value for key, value in zip(SETTING_KEYS, values) if value is not None and value != ""}
    config["validation_prompts"] = [line.strip() for line in str(config.get("validation_prompts", "")).splitlines() if line.strip()]
    config["trigger_word"] = (trigger_word or "").strip()
    return config


def same_value(a, b) -> bool:
    """Whether two values of one setting are the same (a number field gives 4.0 for the preset's 4)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return ("" if a is None else str(a)) == ("" if b is None else str(b))


def setting_changes(before: list, after: list) -> list[str]:
    """What replacing the form's values `before` by `after` changes, as `key old → new` (`SETTING_KEYS` order)."""

    def shown(value) -> str:
        if isinstance(value, float):
            return f"{value:g}"
        return "(empty)" if value is None or value == "" else " / ".join(str(value).splitlines())

    return [f"{key} {shown(old)} → {shown(new)}" for key, old, new in zip(SETTING_KEYS, before, after) if not same_value(old, new)]


def report_markdown(report: dict, notes: list[str] = ()) -> str:
    """The dataset report as a person reads it: counts first, then what needs attention."""
    lines = [
        f"**{report.get('images_used', 0)} images** used of {report.get('images_found', 0)} found "
        f"({report.get('layout', '')}); **{report.get('captions_matched', 0)} captioned**; "
        f"split {report.get('train_count', 0)} train / {report.get('validation_count', 0)} validation.",
        "Aspect-ratio buckets: " + md_text(", ".join(f"{name} x{count}" for name, count in report.get("buckets", {}).items()) or "-"),
    ]

    def listed(title: str, names: list) -> None:
        if names:
            shown = ", ".join(md_text(name) for name in names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
            lines.append(f"- ⚠️ {title} ({len(names)}): {shown}")

    listed("Images without captions", report.get("images_without_captions", []))
    listed("Captions without images", report.get("captions_without_images", []))
    if report.get("trigger_word"):
        listed(f"Captions missing the trigger word {md_code(report['trigger_word'])} (use *Add trigger word to all*)", report.get("captions_missing_trigger", []))
    listed("Duplicate images (dropped)", [f"{item['dropped']} = {item['kept']}" for item in report.get("duplicates", [])])
    listed("Under the course's 1024 px", [f"{item['name']} {item['width']}x{item['height']}" for item in report.get("small_images", [])])
    listed("Files left out", [f"{item['file']}: {item['reason']}" for item in report.get("skipped", [])])
    for note in [*report.get("notes", []), *notes]:
        lines.append(f"- {md_text(note)}")
    return "\n".join(lines)


def progress_html(status: dict) -> str:
    """A progress bar with step, ETA and queue position."""
    step, total = status.get("step", 0), max(status.get("total_steps", 0), 1)
    state = status.get("state", "")
    text = f"{state} · step {step} / {total}"
    if status.get("queue_position"):
        text += f" · place {status['queue_position']} in the queue"
    eta = status.get("eta_seconds")
    if eta is not None and state in ACTIVE:
        minutes, seconds = divmod(int(eta), 60)
        text += f" · ETA {minutes}:{seconds:02d}"
    return f'<div id="train-progress-bar"><progress value="{step}" max="{total}" style="width:100%"></progress><div>{html.escape(text)}</div></div>'


def loss_figure(status: dict) -> Figure:
    """Training loss as a line and validation loss as marked points joined by a line (a single
    validation point still shows); a figure of its own, no pyplot state shared between users."""
    figure = Figure(figsize=(6, 2.8), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        points = status.get(key, [])
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, marker="o" if label == "validation" else None, markersize=4, color=LOSS_COLOURS[label], label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_xlim(0, max(status.get("total_steps", 0), 1) * 1.03)
    axes.grid(alpha=0.3)
    if status.get("loss"):
        axes.legend(loc="upper right")
    else:
        axes.text(0.5, 0.5, "the loss appears here as the job trains", ha="center", va="center", transform=axes.transAxes, color="grey")
    return figure


def sample_caption(path: str) -> str:
    """`step000200_prompt0_strength1.png` -> `strength 1 · step 200 · prompt 1`: the strength first,
    so that a narrow caption still says it in full."""
    name = SampleName.parse(Path(path).name)
    if name is None:
        return Path(path).stem
    return f"strength {name.strength} · step {name.step} · prompt {name.prompt + 1}"


def recheck_report(report: dict, captions: dict[str, str], trigger_word: str) -> dict:
    """The dataset report's caption checks run again on the captions as they are now (after edits,
    *Add trigger word to all* or *Auto-caption*): which images have no caption, which lack the trigger word.

    Args:
        report: the report of the upload (`DatasetReport.to_dict()`); not changed.
        captions: every image's caption now, by image name.
        trigger_word: the trigger word now in the form ("" for none).

    Returns:
        A copy of `report` with `captions_matched`, `images_without_captions`, `trigger_word` and
        `captions_missing_trigger` for these captions.
    """
    blank = [name for name, text in captions.items() if not (text or "").strip()]
    word = (trigger_word or "").strip()
    missing = [name for name, text in captions.items() if word and not has_word(text or "", word)]  # as `dataset.ingest` counts
    return report | {
        "captions_matched": len(captions) - len(blank),
        "images_without_captions": blank,
        "trigger_word": word,
        "captions_missing_trigger": missing,
    }


def job_rows(statuses) -> list[list]:
    """The job list: one row each; its progress column is the same step and total as the progress bar."""
    return [[item.job_id, item.state, f"{item.step}/{item.total_steps}", item.lora_name or "-"] for item in statuses]


def status_markdown(status: dict) -> str:
    lines = [f"**Job** {md_code(status['job_id'])}: **{md_text(status['state'])}**"]
    if status.get("error"):
        lines.append(f"❌ {md_text(status['error'])}")
    for warning in status.get("warnings", []):
        lines.append(f"- ⚠️ {md_text(warning)}")
    if status.get("lora_name"):
        tag = md_code(f"<lora:{status['lora_name']}:0.8>")
        lines.append(f"✅ Your LoRA **{md_text(status['lora_name'])}** is in your library: use it as {tag}.")
    return "\n\n".join(lines)
