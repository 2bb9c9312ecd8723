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

from dataclasses import dataclass

import gradio as gr

from lora_space.core.errors import DatasetError, LoraSpaceError
from lora_space.core.markdown_text import md_text
from lora_space.core.settings import TINY
from lora_space.service import LoraSpace
from lora_space.train.config import (
    MIXED_PRECISIONS,
    OPTIMIZERS,
    QUANTIZATIONS,
    SCHEDULERS,
    merged,
)
from lora_space.train.dataset import add_trigger_word
from lora_space.train.presets import (  # fmt: skip
    default_preset,
    guidance,
    load_presets,
    preset_description,
    preset_values,
)
from lora_space.train.status import ACTIVE, RESUMABLE
from lora_space.ui.api.train import DATASET_CALLS
from lora_space.ui.caller import BrowserId, on_visitor_known, with_caller
from lora_space.ui.errors import user_errors
from lora_space.ui.tabs.generate import GenerateControls
from lora_space.ui.tabs.slots import place_lora, placement_updates
from lora_space.ui.tabs.train_view import (
    JOB_COLUMNS,
    SETTING_KEYS,
    job_rows,
    loss_figure,
    progress_html,
    recheck_report,
    report_markdown,
    same_value,
    sample_caption,
    setting_changes,
    settings_from_widgets,
    status_markdown,
    widget_values,
)  # fmt: skip

FROM_ZIP = "from the zip"  # the Preset box when the zip's config.json filled the form
TRY_STRENGTH = 0.8
THUMBNAILS = 24
TABLE_ROWS = 200  # captions the table shows (and the session keeps); the preview on disk holds them all
POLL_SECONDS = 1.0
TINY_TRAIN_NOTE = (
    "\n\n**In tiny mode**, try `examples/flat_shapes.zip`: twelve shapes drawn with a thick black outline, which the "
    "tiny model never draws. With the zip's own settings (200 steps) it takes about two or three minutes on a CPU; the "
    "samples show the same prompt and seed without the LoRA (strength 0: a flat shape on its background) and with it "
    "(strength 1: black patches at and in the shape, the outline as this small model learns it, often in colours of the "
    "training pictures). Then *Try in Generate*, ask for *a red circle on a blue background* and switch the slot off and on."
)


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


def table_rows(captions: dict[str, str]) -> list[list[str]]:
    """The caption table's rows: the first `TABLE_ROWS` images and their captions."""
    return [[name, caption] for name, caption in list(captions.items())[:TABLE_ROWS]]


def build_train_tab(space: LoraSpace, browser_id: BrowserId) -> TrainHandles:
    """The Train tab (call inside a `gr.Tab`); returns the handles other tabs connect to."""
    settings = space.settings
    presets = load_presets()["presets"]
    first_preset = default_preset(settings.is_tiny)
    start_values = merged(preset_values(first_preset), None, is_tiny=settings.is_tiny).to_dict()

    gr.Markdown(
        "Upload a zip of images and captions (the course's `images/` + `captions/` + `config.json`, "
        "`x.jpg` + `x.txt` pairs, or `metadata.jsonl`), check the report and captions, pick the settings, then *Start*."
        + (TINY_TRAIN_NOTE if settings.base_model == TINY else "")
    )
    job_id = gr.State("")
    # What the form holds: the choice that filled it ("name": a preset or FROM_ZIP), its "values" then,
    # the zip's own ("zip", "zip_info"), and a preset waiting for *Replace them* ("pending").
    applied = gr.State({"name": first_preset, "values": widget_values(start_values), "zip": None, "zip_info": "", "pending": ""})
    # {"id": the uploaded zip's preview (`train.intake`), "report" and "notes" of its upload}: the images and captions stay on disk
    preview = gr.State({})
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
                preset = gr.Dropdown(
                    list(presets), value=first_preset, label="Preset", info=preset_description(first_preset, is_tiny=settings.is_tiny), elem_id="train-preset"
                )
                with gr.Column(visible=False, variant="panel", elem_id="train-preset-ask") as ask:  # a preset asks before it replaces values
                    ask_text = gr.Markdown(elem_id="train-preset-ask-text")
                    with gr.Row():
                        replace = gr.Button("Replace them", size="sm", variant="primary", elem_id="train-preset-replace")
                        keep = gr.Button("Keep the form's values", size="sm", elem_id="train-preset-keep")
                widgets = []
                for index in range(0, len(SETTING_KEYS), 3):
                    with gr.Row():
                        widgets += [setting_component(key, start_values[key]) for key in SETTING_KEYS[index : index + 3]]
            start = gr.Button("Start training", variant="primary", elem_id="train-start")
        with gr.Column(scale=3):
            progress = gr.HTML(progress_html({}), elem_id="train-progress")
            status = gr.Markdown(elem_id="train-status")
            loss_plot = gr.Plot(loss_figure({}), label="Loss (train and validation)", elem_id="train-loss")
            samples = gr.Gallery(label="Samples (strength 0 and 1, fixed seed)", columns=2, height=320, elem_id="train-samples")
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

    def on_upload(zip_path, state, word, *current, visitor, token, progress):
        if not zip_path:
            return {report: "", thumbs: gr.Gallery(visible=False), table: [], preview: {}}
        progress(0.1, desc="Reading the zip")
        preview_id, result = space.preview_dataset(zip_path, visitor=visitor)  # kept on disk; the session keeps its id
        notes, updates = [], {}
        if result.zip_config:
            try:
                merged(result.zip_config, None, is_tiny=settings.is_tiny)  # its own problems, named as the zip's
                config = merged(settings_from_widgets(word, current), result.zip_config, is_tiny=settings.is_tiny)
            except LoraSpaceError as error:
                notes.append(f"The zip's config.json is not used: {error}")
            else:
                values, word = widget_values(config.to_dict()), config.trigger_word or word
                info = (
                    f"The zip's config.json set {', '.join(sorted(map(str, result.zip_config)))}; the other fields kept their "
                    "values. A preset asks before it replaces them."
                )
                notes += ["The settings below now hold the zip's config.json (Preset: “from the zip”; the values you change win).", *config.notes]
                updates = dict(zip(widgets, values)) | {
                    trigger: word, ask: gr.Column(visible=False),
                    preset: gr.Dropdown(choices=[FROM_ZIP, *presets], value=FROM_ZIP, info=info),
                    applied: state | {"name": FROM_ZIP, "values": values, "zip": values, "zip_info": info, "pending": ""},
                }  # fmt: skip
        if len(result.captions) > TABLE_ROWS:
            notes.append(
                f"The table shows the first {TABLE_ROWS} of {len(result.captions)} captions; *Add trigger word to all* and "
                "*Auto-caption* change every caption, and Start uses them all."
            )
        first = result.report.to_dict()
        rows = result.dataset[:THUMBNAILS]
        return updates | {
            report: report_markdown(recheck_report(first, result.captions, word), notes),
            thumbs: gr.Gallery(value=list(zip(rows["image"], rows["name"])), visible=True),
            table: table_rows(result.captions),
            preview: {"id": preview_id, "report": first, "notes": notes},
        }

    def on_recheck(rows, word, state, *, visitor, token):
        """The report's caption checks again, on the captions as they are now."""
        if not state.get("report"):
            return gr.skip()
        edited = {row[0]: row[1] for row in rows or [] if row and row[0]}
        try:
            captions = space.captions(state["id"], visitor=visitor)[0] | edited
        except DatasetError:  # the preview is gone: the table's rows
            captions = edited
        return report_markdown(recheck_report(state["report"], captions, word), state.get("notes", []))

    def on_add_trigger(rows, word, state, *, visitor, token):
        if not (word or "").strip():
            raise DatasetError("Type the trigger word first (a unique word such as `wtrclr_style`), then press the button.")
        edited = {row[0]: row[1] for row in rows or [] if row and row[0]}
        try:  # every caption of the preview, not only the rows the table shows
            captions = add_trigger_word(space.captions(state.get("id", ""), visitor=visitor)[0] | edited, word)
            space.captions(state["id"], visitor=visitor, keep=captions)
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
            current, original = space.captions(state.get("id", ""), visitor=visitor)
        except DatasetError:  # no preview: the zip is read again, and the table's captions replace its own
            return {name: text for name, text in edited.items() if text} or None
        return {name: text for name, text in (current | edited).items() if text != original.get(name, "")} or None

    def values_of(name: str, state: dict) -> list:
        """The form's values that a choice of the Preset box stands for."""
        if name == FROM_ZIP:
            if not state.get("zip"):
                raise DatasetError("No zip's config.json filled the form; upload a zip with one, or pick a preset.")
            return list(state["zip"])
        return widget_values(merged(preset_values(name), None, is_tiny=settings.is_tiny).to_dict())

    def applied_view(name: str, state: dict) -> dict:
        values = values_of(name, state)
        info = state["zip_info"] if name == FROM_ZIP else preset_description(name, is_tiny=settings.is_tiny)
        return dict(zip(widgets, values)) | {
            preset: gr.Dropdown(value=name, info=info), ask: gr.Column(visible=False),
            applied: state | {"name": name, "values": values, "pending": ""},
        }  # fmt: skip

    def on_preset(name, state, *current):
        """A preset picked: applied at once when nothing of the user's or the zip's would go; else asked first."""
        changes = setting_changes(list(current), values_of(name, state))
        edited = not all(same_value(now, then) for now, then in zip(current, state["values"]))
        if not changes or (state["name"] != FROM_ZIP and not edited):
            return applied_view(name, state)
        held = "the zip's config.json" if state["name"] == FROM_ZIP else f"the preset {state['name']}"
        text = (
            f"**{md_text(name)}** would replace values the form holds (from {held}{', with your changes' if edited else ''}): "
            f"{md_text('; '.join(changes))}. Replace them?"
        )
        return {preset: gr.Dropdown(value=state["name"]), ask: gr.Column(visible=True), ask_text: text, applied: state | {"pending": name}}

    def on_replace(state):
        return applied_view(state["pending"], state) if state.get("pending") else {ask: gr.Column(visible=False)}

    # -- jobs -------------------------------------------------------------------------------

    def job_view(job: str, seen: dict | None = None, status_now=None) -> dict:
        """Every output that shows the job `job` (an empty id clears the view). Samples and
        checkpoints are sent again only when their lists change (`seen` holds what the page has)."""
        if not job:
            return {progress: progress_html({}), status: "", cancel: gr.Button(visible=False), resume: gr.Button(visible=False), timer: gr.Timer(active=False), shown: {}}
        found = (status_now or space.jobs.status(job)).to_dict()
        state = found["state"]
        done = state == "done"
        in_library = done and bool(found.get("lora_name"))  # a LoRA kept over quota is only a download
        seen = seen if seen and seen.get("job") == job else {}
        now = {"job": job, "state": state, "step": found["step"], "samples": found["samples"], "checkpoints": found["checkpoints"], "done": done, "losses": [len(found["loss"]), len(found["val_loss"])]}
        return {
            progress: progress_html(found),
            status: status_markdown(found),
            loss_plot: loss_figure(found) if (len(found["loss"]), len(found["val_loss"])) != tuple(seen.get("losses", ())) else gr.skip(),
            samples: [(path, sample_caption(path)) for path in found["samples"]] if now["samples"] != seen.get("samples") else gr.skip(),
            checkpoints: (found["checkpoints"] or None) if now["checkpoints"] != seen.get("checkpoints") else gr.skip(),
            cancel: gr.Button(visible=state in ACTIVE),
            resume: gr.Button(visible=state in RESUMABLE),
            lora_file: gr.File(value=found["lora_file"] if done else None, visible=done) if done != seen.get("done") else gr.skip(),
            lora_name: gr.Textbox(value=found["lora_name"] if done else "", visible=in_library),
            try_button: gr.Button(visible=in_library),
            publish_button: gr.Button(visible=in_library),
            timer: gr.Timer(active=state in ACTIVE),
            shown: now,
        }

    def list_view(visitor, selected: str = "", status_now=None) -> dict:
        """The visitor's jobs; `status_now` (the shown job's status, read once) stands in for its row,
        so that the row and the progress bar show the same step."""
        statuses = [status_now if status_now and item.job_id == status_now.job_id else item for item in space.jobs.list_jobs(visitor)]
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
            now = space.jobs.status(job)
            yield job_view(job, status_now=now) | list_view(visitor, job, now) | {job_id: job}

    def cleared_view() -> dict:
        """The view with nothing of the previous job: Start calls it first, so that its progress,
        loss, samples, files and buttons go before (or even if) the new job starts."""
        return job_view("") | {
            loss_plot: loss_figure({}), samples: [], checkpoints: None, lora_file: gr.File(value=None, visible=False),
            lora_name: gr.Textbox(value="", visible=False), try_button: gr.Button(visible=False), publish_button: gr.Button(visible=False),
        }  # fmt: skip

    def on_tick(job, seen, *, visitor, token):
        now = space.jobs.status(job) if job else None
        view = job_view(job, seen, now)
        before = seen or {}
        if job and before.get("state") is not None and (before["state"], before.get("step")) != (view[shown]["state"], view[shown]["step"]):
            view |= list_view(visitor, job, now)  # the job moved on: its row says the same step as the progress bar
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
    preset_outputs = [preset, ask, ask_text, applied, *widgets]
    upload.upload(
        with_caller(settings, on_upload), [*browser_id, upload, applied, trigger, *widgets],
        [report, thumbs, table, preview, trigger, *preset_outputs], api_visibility="private", **reading,
    )  # fmt: skip
    # The report's caption checks follow every caption change (an edit, the trigger word, the buttons).
    recheck = {"fn": with_caller(settings, on_recheck), "inputs": [*browser_id, table, trigger, preview], "outputs": report}
    quietly = {"api_visibility": "private", "show_progress": "hidden"}
    add_trigger.click(with_caller(settings, on_add_trigger), [*browser_id, table, trigger, preview], table, api_visibility="private").then(**recheck, **quietly)
    auto.click(with_caller(settings, on_autocaption), [*browser_id, preview, trigger], table, api_visibility="private").then(**recheck, **quietly)
    table.input(**recheck, **quietly, trigger_mode="always_last")
    trigger.input(**recheck, **quietly, trigger_mode="always_last")
    preset.select(user_errors(on_preset), [preset, applied, *widgets], preset_outputs, **quietly)  # the user's pick only (once)
    replace.click(user_errors(on_replace), applied, preset_outputs, **quietly)
    keep.click(lambda state: {ask: gr.Column(visible=False), applied: state | {"pending": ""}}, applied, [ask, applied], **quietly)
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
