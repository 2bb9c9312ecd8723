"""The Publish tab and the `/publish` endpoint: a LoRA the visitor owns goes to their Hub account.

The token is the caller's own for each call: the header's sign-in on a Space (`gr.OAuthToken`),
`Client(..., oauth_token=...)` from a script, or on a local run a token typed in the tab or
`HF_TOKEN`. It is handed down to the call and never kept (no `gr.State`, no global, no file).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from lora_space.core.errors import PublishError
from lora_space.library.store import scan_library
from lora_space.publish.card import FRONT_MATTER
from lora_space.publish.publish import PublishRequest
from lora_space.service import LoraSpace
from lora_space.ui.caller import (
    BrowserId,
    on_visitor_known,
    token_of,
    visitor_of,
    with_caller,
)
from lora_space.ui.errors import api_errors
from lora_space.visitors.owners import visitor_lora_dir

INTRO = (
    "Push a LoRA you trained, baked or uploaded here to your Hugging Face account, with a model card "
    "the Hub understands (base model, licence, trigger words, sample images as the widget), its sample "
    "images and a reproducibility file. Render the card, edit it if you like, then publish: one commit, "
    "private unless you untick it."
)
RIGHTS = "I hold the rights to the training images and may share this LoRA under the chosen licence"


def _paths(files) -> list[Path]:
    """Uploaded files (paths or Gradio file objects) as paths."""
    result = []
    for item in files or []:
        path = getattr(item, "path", None) or (item.get("path") if isinstance(item, dict) else item)
        if path:
            result.append(Path(str(path)))
    return result


def register_publish_endpoints(space: LoraSpace) -> None:
    """Register `/publish` (call inside the demo's Blocks)."""

    @api_errors
    def publish_lora(
        lora: str,
        repo_id: str,
        private: bool = True,
        overwrite: bool = False,
        trigger_word: str = "",
        license: str = "",
        sample_images: list[gr.FileData] | None = None,
        extra_formats: list[str] | None = None,
        description: str = "",
        card: str = "",
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request = None,
    ) -> dict:
        """Publish a LoRA you own to the Hub with a model card, sample images and a reproducibility file.

        Args:
            lora: a training job id, a name in your library, or the path of a file of yours (a bake).
            repo_id: where to publish, 'your-name/repo-name' (or an organisation you can write to).
            private: make a new repo private (default true).
            overwrite: commit into an existing repo of that name (default false: refused).
            trigger_word: the trigger word(s) for the card, comma-separated (default: the LoRA's own).
            license: a Hub licence id (default: the base model's terms, e.g. FLUX.1-dev's non-commercial licence).
            sample_images: images (PNGs from Generate keep their prompts) or a portfolio zip; they become the card's widget.
            extra_formats: also publish "kohya" (A1111/Forge) and/or "comfyui" copies.
            description: what the LoRA does, for the card.
            card: your own README.md (YAML block + body) instead of the rendered card.
        Returns:
            {"url": the repo's page, "commit": the commit id, "files": the files published, "notes": what to know
            (e.g. that a LoRA of the tiny test model is published as a test artefact naming no base model)}
        """
        settings = space.settings
        publish_request = PublishRequest(
            lora=lora,
            repo_id=repo_id,
            private=private,
            overwrite=overwrite,
            trigger_word=trigger_word,
            license=license,
            sample_images=tuple(_paths(sample_images)),
            extra_formats=tuple(extra_formats or ()),
            description=description,
            card=card,
        )
        visitor = visitor_of(settings, request)
        scope = oauth_token.scope if oauth_token else ""
        result = space.publish(publish_request, token=token_of(oauth_token), visitor=visitor, oauth_scope=scope)
        return result.to_dict()

    gr.api(publish_lora, api_name="publish")


def _own_names(space: LoraSpace, visitor) -> list[str]:
    return [entry.name for entry in scan_library(visitor_lora_dir(space.settings, visitor)) if entry.problem is None]


def build_publish_tab(space: LoraSpace, browser_id: BrowserId) -> gr.Dropdown:
    """The Publish tab (call inside a `gr.Tab`); returns its LoRA field, which other tabs fill."""
    settings = space.settings
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column():
            with gr.Row():
                source = gr.Dropdown(
                    label="Your LoRA (library name or training job id)",
                    choices=[],
                    allow_custom_value=True,
                    elem_id="publish-source",
                )
                refresh = gr.Button("Refresh", size="sm", scale=0)
            upload = gr.File(label="…or upload a .safetensors LoRA", file_types=[".safetensors"], type="filepath")
            repo_id = gr.Textbox(label="Repo id", placeholder="your-name/watercolor-flux", elem_id="publish-repo")
            with gr.Row():
                private = gr.Checkbox(value=True, label="Private repo")
                overwrite = gr.Checkbox(value=False, label="Overwrite an existing repo")
            trigger = gr.Textbox(label="Trigger word(s)", placeholder="default: the LoRA's own")
            licence = gr.Textbox(label="Licence id", placeholder="default: the base model's terms (FLUX.1-dev: non-commercial)")
            description = gr.Textbox(label="What the LoRA does", lines=2)
            formats = gr.CheckboxGroup(["kohya", "comfyui"], label="Also publish copies for")
            samples = gr.File(
                label="Sample images or a portfolio zip (Generate's batch)",
                file_count="multiple",
                file_types=["image", ".zip"],
                type="filepath",
            )
            token = gr.Textbox(
                label="Hub token with write access (or set HF_TOKEN)",
                type="password",
                visible=not settings.on_space,
                elem_id="publish-token",
            )
            rights = gr.Checkbox(value=False, label=RIGHTS, elem_id="publish-rights")
            with gr.Row():
                render = gr.Button("Render the card", elem_id="publish-render")
                send = gr.Button("Publish", variant="primary", elem_id="publish-send")
            status = gr.Markdown(elem_id="publish-status")
        with gr.Column():
            card = gr.Code(label="Model card (README.md), editable", language="markdown", interactive=True, lines=24, elem_id="publish-card")
            card_view = gr.Markdown(label="Preview", elem_id="publish-card-view")

    fields = [source, upload, repo_id, trigger, licence, description, formats, samples]

    def build(lora, uploaded, repo, words, licence_id, text, extra, images, **more) -> PublishRequest:
        return PublishRequest(
            lora=lora or "",
            repo_id=repo or "",
            trigger_word=words or "",
            license=licence_id or "",
            description=text or "",
            extra_formats=tuple(extra or ()),
            sample_images=tuple(_paths(images)),
            uploaded_file=Path(uploaded) if uploaded else None,
            **more,
        )

    def on_render(*values, visitor, token, progress):
        progress(0.2, desc="writing the card")
        text = space.preview_card(build(*values), visitor=visitor)
        return text, _body(text)

    def on_publish(*values, visitor, token, progress):
        *request_values, is_private, may_overwrite, card_text, rights_given, typed = values
        if not rights_given:
            raise PublishError("Tick the box that you hold the rights to the training images before publishing.")
        request = build(*request_values, private=is_private, overwrite=may_overwrite, card=card_text or "")
        result = space.publish(request, token=token, typed_token=typed, visitor=visitor, progress=progress)
        files = ", ".join(f"`{name}`" for name in result.files)
        notes = "".join(f"\n\n{note}" for note in result.notes)
        return f"Published: [{result.url}]({result.url}) (commit `{result.commit[:12]}`): {files}{notes}"

    def on_refresh(*, visitor, token):
        return gr.update(choices=_own_names(space, visitor))

    render.click(with_caller(settings, on_render), [*browser_id, *fields], [card, card_view], api_visibility="private")
    send.click(
        with_caller(settings, on_publish),
        [*browser_id, *fields, private, overwrite, card, rights, token],
        status,
        api_visibility="private",
    )
    card.input(_body, card, card_view, api_visibility="private")
    refresh.click(with_caller(settings, on_refresh), [*browser_id], source, api_visibility="private")
    on_visitor_known(browser_id, with_caller(settings, on_refresh), [*browser_id], source, api_visibility="private", show_progress="hidden")
    return source


def _body(text: str | None) -> str:
    """The card below its YAML block, for the Markdown preview."""
    text = text or ""
    match = FRONT_MATTER.match(text)
    return text[match.end():] if match else text
