"""The Train tab: a dataset zip -> report and captions -> settings -> a job followed live.

`build_train_tab` lays the tab out and returns its handles; `wire_train_to_generate` connects
"Try in Generate" to the Generate tab's slots once both tabs exist. Handlers only format what
`lora_space.train` returns: the dataset preview comes from `space.preview_dataset` (kept on
disk, `train.intake`; the session holds its id and the first `TABLE_ROWS` captions), jobs from
`space.start_training` and `space.jobs` (`JobManager`). A `gr.Timer` polls the shown job while
it is queued or running; the job list is the visitor's own (`with_caller`), so it survives a
page reload. *Start* and *Resume* stream the job's view: on ZeroGPU
the job trains inside that event (the visitor's quota pays) and pauses when the page closes.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from matplotlib.figure import Figure

from ..errors import DatasetError, LoraSpaceError
from ..markdown_text import md_code, md_text
from ..service import LoraSpace
from ..train import intake
from ..train.config import MIXED_PRECISIONS, OPTIMIZERS, QUANTIZATIONS, SCHEDULERS, default_preset, guidance, load_presets, merged, preset_values
from ..train.dataset import add_trigger_word, has_word
from .errors import user_errors
from .generate import GenerateControls, place_lora, placement_updates
from .train_api import DATASET_CALLS
from .visitors import BrowserId, on_visitor_known, with_caller

TRY_STRENGTH = 0.8
THUMBNAILS = 24
TABLE_ROWS = 200  # captions the table shows (and the session keeps); the preview on disk holds them all
POLL_SECONDS = 1.0
ACTIVE = ("queued", "running")
# The settings shown beside the course's guidance, in this order (trigger_word sits with the captions).
SETTING_KEYS = [
    "resolution", "max_train_steps", "learning_rate", "lr_scheduler", "lr_warmup_steps", "train_batch_size",
    "network_dim", "network_alpha", "optimizer_type", "validation_split", "sample_every", "checkpoint_every",
    "seed", "gradient_checkpointing", "cache_latents", "mixed_precision", "quantize_base", "validation_prompts",
]  # fmt: skip
JOB_COLUMNS = ["job", "state", "progress", "LoRA"]
LOSS_COLOURS = {"train": "#2563eb", "validation": "#ea580c"}


@dataclass
class TrainHandles:
    """What other tabs connect to: the finished LoRA's library name and the buttons that use it."""

    browser_id: BrowserId
    lora_name: gr.Textbox  # the finished LoRA (a library name, usable as a Generate source or in Publish)
    try_button: gr.Button
    publish_button: gr.Button  # `wire_train_to_publish` puts `lora_name` into the Publish tab
    status: gr.Markdown
    space: LoraSpace


def setting_component(key: str, value) -> gr.components.Component:
    """One setting with the course's guidance beside it (`presets.json`)."""
    info = guidance(key)
    common = {"label": key, "info": info, "value": value, "elem_id": f"train-{key.replace('_', '-')}"}
    if key in ("lr_scheduler", "optimizer_type", "mixed_precision", "quantize_base"):
        choices = {"lr_scheduler": SCHEDULERS, "optimizer_type": tuple(OPTIMIZERS.values()), "mixed_precision": MIXED_PRECISIONS, "quantize_base": QUANTIZATIONS}[key]
        return gr.Dropdown(list(choices), **common)
    if key in ("gradient_checkpointing", "cache_latents"):
        return gr.Checkbox(**common)
    if key == "validation_split":
        return gr.Slider(0, 0.5, step=0.05, **common)
    if key == "validation_prompts":
        return gr.Textbox(lines=2, placeholder="one prompt a line", **(common | {"value": "\n".join(value or [])}))
    if key == "learning_rate" or key == "network_alpha":
        return gr.Number(**common)
    return gr.Number(precision=0, **common)


def widget_values(config: dict) -> list:
    return ["\n".join(config.get(key) or []) if key == "validation_prompts" else config.get(key) for key in SETTING_KEYS]


def settings_from_widgets(trigger_word: str, values) -> dict:
    config = {key: value for key, value in zip(SETTING_KEYS, values) if value is not None and value != ""}
    config["validation_prompts"] = [line.strip() for line in str(config.get("validation_prompts", "")).splitlines() if line.strip()]
    config["trigger_word"] = (trigger_word or "").strip()
    return config


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
    """`step000200_prompt0_strength1.png` -> `step 200 · prompt 1 · strength 1`."""
    match = re.fullmatch(r"step0*(\d+)_prompt(\d+)_strength([\d.]+)", Path(path).stem)
    if not match:
        return Path(path).stem
    step, prompt, strength = match.groups()
    return f"step {step} · prompt {int(prompt) + 1} · strength {strength}"


def table_rows(captions: dict[str, str]) -> list[list[str]]:
    """The caption table's rows: the first `TABLE_ROWS` images and their captions."""
    return [[name, caption] for name, caption in list(captions.items())[:TABLE_ROWS]]


def job_rows(statuses) -> list[list]:
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


def build_train_tab(space: LoraSpace, browser_id: BrowserId) -> TrainHandles:
    """The Train tab (call inside a `gr.Tab`); returns the handles other tabs connect to."""
    settings = space.settings
    presets = load_presets()["presets"]
    first_preset = default_preset(settings.is_tiny)
    start_values = merged(preset_values(first_preset), None, is_tiny=settings.is_tiny).to_dict()

    gr.Markdown(
        "Upload a zip of images and captions (the course's `images/` + `captions/` + `config.json`, "
        "`x.jpg` + `x.txt` pairs, or `metadata.jsonl`), check the report and captions, pick the settings, then *Start*."
    )
    job_id = gr.State("")
    preview = gr.State({})  # {"id": the uploaded zip's preview (`train.intake`)}: the images and captions stay on disk
    shown = gr.State({})  # what the page shows of the job: its samples, checkpoints, done
    with gr.Row():
        with gr.Column(scale=3):
            upload = gr.File(label="Dataset zip", file_types=[".zip"], type="filepath", elem_id="train-zip")
            report = gr.Markdown(elem_id="train-report")
            thumbs = gr.Gallery(label="Images", columns=8, height=180, elem_id="train-thumbs", visible=False)
            with gr.Row(equal_height=True):
                trigger = gr.Textbox(label="trigger_word", info=guidance("trigger_word"), value=start_values["trigger_word"], elem_id="train-trigger", scale=3)
                add_trigger = gr.Button("Add trigger word to all", size="sm", scale=1)
                auto = gr.Button("Auto-caption", size="sm", scale=1)
            table = gr.Dataframe(headers=["image", "caption"], type="array", interactive=True, static_columns=[0], wrap=True, elem_id="train-captions", max_height=320)
            with gr.Accordion("Settings", open=True):
                preset = gr.Dropdown(list(presets), value=first_preset, label="Preset", info=presets[first_preset]["description"], elem_id="train-preset")
                widgets = []
                for index in range(0, len(SETTING_KEYS), 3):
                    with gr.Row():
                        widgets += [setting_component(key, start_values[key]) for key in SETTING_KEYS[index : index + 3]]
            start = gr.Button("Start training", variant="primary", elem_id="train-start")
        with gr.Column(scale=3):
            progress = gr.HTML(progress_html({}), elem_id="train-progress")
            status = gr.Markdown(elem_id="train-status")
            loss_plot = gr.Plot(loss_figure({}), label="Loss (train and validation)", elem_id="train-loss")
            samples = gr.Gallery(label="Samples (strength 0 and 1, fixed seed)", columns=4, height=220, elem_id="train-samples")
            checkpoints = gr.File(label="Checkpoints", file_count="multiple", interactive=False, elem_id="train-checkpoints")
            with gr.Row():
                cancel = gr.Button("Cancel", variant="stop", size="sm", visible=False, elem_id="train-cancel")
                resume = gr.Button("Resume", size="sm", visible=False, elem_id="train-resume")
            lora_file = gr.File(label="Your LoRA", interactive=False, visible=False, elem_id="train-lora")
            lora_name = gr.Textbox(label="Your LoRA's library name", interactive=False, visible=False, elem_id="train-lora-name")
            with gr.Row():
                try_button = gr.Button("Try in Generate", visible=False, elem_id="train-try")
                publish_button = gr.Button("Publish", visible=False, elem_id="train-publish")
            with gr.Accordion("Your jobs", open=True):
                jobs = gr.Dataframe(headers=JOB_COLUMNS, type="array", interactive=False, elem_id="train-jobs")
                pick = gr.Dropdown(label="Show job", choices=[], elem_id="train-pick")
    timer = gr.Timer(POLL_SECONDS, active=False)

    # -- the dataset ------------------------------------------------------------------------

    def on_upload(zip_path, chosen_preset, *, visitor, token, progress):
        if not zip_path:
            return {report: "", thumbs: gr.Gallery(visible=False), table: [], preview: {}}
        progress(0.1, desc="Reading the zip")
        preview_id, result = space.preview_dataset(zip_path, visitor=visitor)  # kept on disk; the session keeps its id
        zip_config = result.zip_config or {}
        notes, updates = [], {}
        try:
            config = merged(preset_values(chosen_preset), zip_config, is_tiny=settings.is_tiny)
            if zip_config:
                notes.append("The settings below now hold the zip's config.json (the values you change win).")
            notes += config.notes
            updates = dict(zip(widgets, widget_values(config.to_dict()))) | {trigger: config.trigger_word}
        except LoraSpaceError as error:
            notes.append(f"The zip's config.json is not used: {error}")
        report_dict = result.report.to_dict()
        report_dict["trigger_word"] = report_dict["trigger_word"] or updates.get(trigger, "")
        if report_dict["trigger_word"]:
            report_dict["captions_missing_trigger"] = [name for name, text in result.captions.items() if not has_word(text, report_dict["trigger_word"])]
        if len(result.captions) > TABLE_ROWS:
            notes.append(
                f"The table shows the first {TABLE_ROWS} of {len(result.captions)} captions; *Add trigger word to all* and "
                "*Auto-caption* change every caption, and Start uses them all."
            )
        rows = result.dataset[:THUMBNAILS]
        return updates | {
            report: report_markdown(report_dict, notes),
            thumbs: gr.Gallery(value=list(zip(rows["image"], rows["name"])), visible=True),
            table: table_rows(result.captions),
            preview: {"id": preview_id},
        }

    def on_add_trigger(rows, word, state, *, visitor, token):
        if not (word or "").strip():
            raise DatasetError("Type the trigger word first (a unique word such as `wtrclr_style`), then press the button.")
        edited = {row[0]: row[1] for row in rows or [] if row and row[0]}
        try:  # every caption of the preview, not only the rows the table shows
            captions = add_trigger_word(intake.captions_of(settings, visitor, state.get("id", ""))[0] | edited, word)
            intake.keep_captions(settings, visitor, state["id"], captions)
        except DatasetError:  # no preview (gone, or used by Start): the table's rows
            captions = add_trigger_word(edited, word)
        return table_rows(captions)

    def on_autocaption(state, word, *, visitor, token, progress):
        if not state.get("id"):
            raise DatasetError("Upload a dataset zip first; auto-captioning writes a caption for each of its images.")
        captions = space.autocaption(state["id"], word or "", visitor=visitor, progress=lambda fraction, text: progress(fraction, desc=text))
        return table_rows(captions)

    def start_captions(rows, state, visitor) -> dict | None:
        """The captions that differ from the zip's: the preview's (every image) with the table's edits over them."""
        edited = {row[0]: row[1] for row in rows or [] if row and row[0]}
        try:
            current, original = intake.captions_of(settings, visitor, state.get("id", ""))
        except DatasetError:  # no preview: the zip is read again, and the table's captions replace its own
            return {name: text for name, text in edited.items() if text} or None
        return {name: text for name, text in (current | edited).items() if text != original.get(name, "")} or None

    def on_preset(name):
        values = preset_values(name)
        config = merged(values, None, is_tiny=settings.is_tiny).to_dict()
        return [gr.Dropdown(info=presets[name]["description"])] + widget_values(config)

    # -- jobs -------------------------------------------------------------------------------

    def job_view(job: str, seen: dict | None = None) -> dict:
        """Every output that shows the job `job` (an empty id clears the view). Samples and
        checkpoints are sent again only when their lists change (`seen` holds what the page has)."""
        if not job:
            return {progress: progress_html({}), status: "", cancel: gr.Button(visible=False), resume: gr.Button(visible=False), timer: gr.Timer(active=False), shown: {}}
        found = space.jobs.status(job).to_dict()
        state = found["state"]
        done = state == "done"
        in_library = done and bool(found.get("lora_name"))  # a LoRA kept over quota is only a download
        seen = seen if seen and seen.get("job") == job else {}
        now = {"job": job, "state": state, "samples": found["samples"], "checkpoints": found["checkpoints"], "done": done, "losses": [len(found["loss"]), len(found["val_loss"])]}
        return {
            progress: progress_html(found),
            status: status_markdown(found),
            loss_plot: loss_figure(found) if (len(found["loss"]), len(found["val_loss"])) != tuple(seen.get("losses", ())) else gr.skip(),
            samples: [(path, sample_caption(path)) for path in found["samples"]] if now["samples"] != seen.get("samples") else gr.skip(),
            checkpoints: (found["checkpoints"] or None) if now["checkpoints"] != seen.get("checkpoints") else gr.skip(),
            cancel: gr.Button(visible=state in ACTIVE),
            resume: gr.Button(visible=state in ("interrupted", "cancelled", "failed")),
            lora_file: gr.File(value=found["lora_file"] if done else None, visible=done) if done != seen.get("done") else gr.skip(),
            lora_name: gr.Textbox(value=found["lora_name"] if done else "", visible=in_library),
            try_button: gr.Button(visible=in_library),
            publish_button: gr.Button(visible=in_library),
            timer: gr.Timer(active=state in ACTIVE),
            shown: now,
        }

    def list_view(visitor, selected: str = "") -> dict:
        statuses = space.jobs.list_jobs(visitor)
        choices = [(f"{item.job_id[:8]} · {item.state} · {item.step}/{item.total_steps}", item.job_id) for item in statuses]
        return {jobs: job_rows(statuses), pick: gr.Dropdown(choices=choices, value=selected or None)}

    def on_start(zip_path, rows, state, word, *values, visitor, token):
        if not zip_path:
            raise DatasetError("Upload a dataset zip first (images plus captions), then press Start.")
        captions = start_captions(rows, state, visitor)
        started = space.start_training(zip_path, settings_from_widgets(word, values), visitor=visitor, preview=state.get("id", ""), captions=captions)
        yield from follow_view(started.job_id, visitor)

    def follow_view(job: str, visitor):
        """The job's view as it goes: once off ZeroGPU (the timer polls), after each chunk on ZeroGPU,
        where the job trains inside this event (`JobManager.follow`) and pauses when the page closes."""
        for _ in space.jobs.follow(job):
            yield job_view(job) | list_view(visitor, job) | {job_id: job}

    def cleared_view() -> dict:
        """The view with nothing of the previous job: Start calls it first, so that its progress,
        loss, samples, files and buttons go before (or even if) the new job starts."""
        return job_view("") | {
            loss_plot: loss_figure({}), samples: [], checkpoints: None, lora_file: gr.File(value=None, visible=False),
            lora_name: gr.Textbox(value="", visible=False), try_button: gr.Button(visible=False), publish_button: gr.Button(visible=False),
        }  # fmt: skip

    def on_tick(job, seen, *, visitor, token):
        view = job_view(job, seen)
        if job and (seen or {}).get("state") not in (None, view[shown]["state"]):  # the job moved on: the list shows it
            view |= list_view(visitor, job)
        return view

    def on_pick(job, *, visitor, token):
        return job_view(job or "") | {job_id: job or ""}

    def on_cancel(job, *, visitor, token):
        space.jobs.cancel(job)
        return job_view(job) | list_view(visitor, job)

    def on_resume(job, *, visitor, token):
        space.jobs.resume(job, visitor=visitor)
        yield from follow_view(job, visitor)

    def on_visitor(*, visitor, token):
        """On page load: the visitor's jobs, and the live view of one still queued or running."""
        active = next((item.job_id for item in space.jobs.list_jobs(visitor) if item.state in ACTIVE), "")
        return list_view(visitor, active) | (job_view(active) | {job_id: active} if active else {})

    view_outputs = [progress, status, loss_plot, samples, checkpoints, cancel, resume, lora_file, lora_name, try_button, publish_button, timer, shown]
    list_outputs = [jobs, pick]
    reading = {"concurrency_id": DATASET_CALLS, "concurrency_limit": settings.limits.dataset_calls}  # shared with /start_training
    upload.upload(with_caller(settings, on_upload), [*browser_id, upload, preset], [report, thumbs, table, preview, trigger, *widgets], api_visibility="private", **reading)
    add_trigger.click(with_caller(settings, on_add_trigger), [*browser_id, table, trigger, preview], table, api_visibility="private")
    auto.click(with_caller(settings, on_autocaption), [*browser_id, preview, trigger], table, api_visibility="private")
    preset.change(user_errors(on_preset), preset, [preset, *widgets], api_visibility="private")
    start.click(cleared_view, None, view_outputs, queue=False, show_progress="hidden", api_visibility="private").then(
        with_caller(settings, on_start), [*browser_id, upload, table, preview, trigger, *widgets],
        [*view_outputs, *list_outputs, job_id], api_visibility="private", show_progress_on=status, **reading,
    )  # fmt: skip
    # Progress shows on the status line, never as overlays on the job picker and buttons, which a
    # background event (load, timer) could leave behind and which would block their clicks.
    timer.tick(with_caller(settings, on_tick), [*browser_id, job_id, shown], [*view_outputs, *list_outputs], api_visibility="private", show_progress="hidden")
    pick.input(with_caller(settings, on_pick), [*browser_id, pick], [*view_outputs, job_id], api_visibility="private", show_progress_on=status)
    cancel.click(with_caller(settings, on_cancel), [*browser_id, job_id], [*view_outputs, *list_outputs], api_visibility="private", show_progress_on=status)
    resume.click(
        with_caller(settings, on_resume), [*browser_id, job_id], [*view_outputs, *list_outputs, job_id], api_visibility="private",
        concurrency_limit=None, show_progress_on=status,
    )  # fmt: skip
    on_visitor_known(
        browser_id, with_caller(settings, on_visitor), [*browser_id], [*list_outputs, *view_outputs, job_id], api_visibility="private", show_progress="hidden"
    )
    return TrainHandles(browser_id, lora_name, try_button, publish_button, status, space)


def wire_train_to_generate(handles: TrainHandles, controls: GenerateControls, tabs: gr.Tabs | None = None) -> None:
    """"Try in Generate": the finished LoRA goes into the first free Generate slot at 0.8 (opening the
    folded group when it lands there), and Generate shows, saying where it went and offering to switch
    the other slots off. When a job's LoRA joins the library, the library and the pickers list it."""

    @user_errors
    def on_try(name, *slot_values):
        if not name:
            raise DatasetError("No finished LoRA is shown; pick a finished job in *Your jobs* first.")
        placement = place_lora(list(slot_values), name, TRY_STRENGTH)
        return placement_updates(placement) + ([gr.Tabs(selected="generate")] if tabs is not None else [])

    outputs = [*controls.placement_outputs] + ([tabs] if tabs is not None else [])
    controls.clear_stale_on(handles.try_button.click, own=[controls.slot_note, controls.solo_button])
    handles.try_button.click(
        on_try, [handles.lora_name, *controls.slots], outputs, api_visibility="private", show_progress="hidden"
    )
    controls.follow_library(handles.lora_name.change(lambda: None, None, None, api_visibility="private", show_progress="hidden"))


def wire_train_to_publish(handles: TrainHandles, source: gr.components.Component, tabs: gr.Tabs | None = None) -> None:
    """"Publish": the finished LoRA's library name goes into the Publish tab's LoRA field, and Publish shows.

    Args:
        handles: this tab's handles.
        source: the Publish tab's LoRA field (a library name or job id).
        tabs: the app's tabs, to switch to Publish (None: stay).
    """

    def on_publish(name):
        return [name] + ([gr.Tabs(selected="publish")] if tabs is not None else [])

    outputs = [source] + ([tabs] if tabs is not None else [])
    handles.publish_button.click(on_publish, handles.lora_name, outputs, api_visibility="private")
