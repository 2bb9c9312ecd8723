"""The Discover tab: search the Hub for LoRAs of the current base, open one, use it in Generate.

`build_discover_tab` lays the tab out and returns its handles; `wire_discover_to_generate`
connects "Use in Generate" to the Generate tab's slots once both tabs exist (build_demo calls
it); `register_discover_endpoints` adds `/search_loras`. Handlers only format what
`lora_space.discover.finder` returns; each one that reaches the Hub gets the visitor's own token per
request (`with_caller`), never a stored one.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from lora_space.core.markdown_text import md_text
from lora_space.discover.finder import Evaluation, LoraSummary, starter_list
from lora_space.generate.prompts import insert_trigger_words
from lora_space.hub.search import SORTS
from lora_space.service import LoraSpace
from lora_space.ui.caller import BrowserId, token_of, with_caller
from lora_space.ui.errors import api_errors
from lora_space.ui.tabs.generate import GenerateControls, size_text
from lora_space.ui.tabs.lora_tools import summary_markdown
from lora_space.ui.tabs.slots import Placement, place_lora, placement_updates

DEFAULT_STRENGTH = 0.8
PAGE_SIZE = 12
RESULT_COLUMNS = ["repo", "downloads", "likes", "licence", "updated", "trigger words", "weight file"]
STARTER_COLUMNS = ["category", "repo", "what it does"]


@dataclass
class DiscoverHandles:
    """What other tabs connect to: the opened LoRA and the button that uses it."""

    browser_id: BrowserId
    selected: gr.State  # {"source", "repo_id", "trigger_words"} of the opened LoRA, or None
    use_button: gr.Button
    use_status: gr.Markdown
    space: LoraSpace
    query: gr.Textbox | None = None  # the search box, and `search_after(event)`: after `event`, search for what it holds
    page: gr.Number | None = None
    search_after: Callable[[Any], None] | None = None


def result_rows(results: list[dict[str, Any]]) -> list[list]:
    return [
        [
            item["repo_id"],
            item["downloads"],
            item["likes"],
            item["license"] or "-",
            item["last_modified"][:10],
            ", ".join(item["trigger_words"]),
            item["weight_file"] or "(none usable)",
        ]
        for item in results
    ]


def starter_rows() -> list[list]:
    return [[entry["category"], entry["repo_id"], entry["title"]] for entry in starter_list()]


def previews(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Preview images (Hub URLs the browser loads) captioned with their repo."""
    return [(item["preview_url"], item["repo_id"]) for item in results if item["preview_url"]]


def verdict_markdown(evaluation: Evaluation) -> str:
    summary = evaluation.summary
    facts = [
        f"### {md_text(summary.repo_id)}",
        f"by **{md_text(summary.author)}** · updated {md_text(summary.last_modified[:10] or 'unknown')} · "
        f"weight file {md_text(summary.weight_file or 'none usable')}",
    ]
    facts += [f"- {md_text(line)}" for line in evaluation.verdict]
    facts += [f"- ⚠️ {md_text(note)}" for note in evaluation.notes]
    report = evaluation.report
    if report is not None and not report.compatible:
        facts.append(
            f"\n**Use in Generate is off**: its {size_text(report.size_bytes)} file fits no module of "
            f"{md_text(report.base_model)}, so it is not downloaded."
        )
    if evaluation.example_prompts:  # a paragraph of its own: after a list, a plain line would join its last item
        facts.append("\n**Example prompts from the card:**\n")
        facts += [f"- {md_text(prompt)}" for prompt in evaluation.example_prompts[:4]]
    return "\n".join(facts)


def inspection_markdown(evaluation: Evaluation) -> str:
    """The header inspection as the LoRA tools' Inspect shows it (`summary_markdown`), or why there is none."""
    if evaluation.report is not None:
        return summary_markdown(evaluation.report)
    if evaluation.summary.weight_file:
        return "The weight file's header could not be read (see the notes above)."
    return "No usable weight file to inspect."


def usable_for_generate(evaluation: Evaluation) -> bool:
    """Whether "Use in Generate" may download it: a .safetensors file, no problem, not known to misfit the base."""
    summary, report = evaluation.summary, evaluation.report
    return summary.weight_file is not None and summary.problem is None and (report is None or bool(report.compatible))


def search_note(count: int, page: int, sort_by: str) -> str:
    """What a page of results says, including a page past the last one."""
    if count:
        return f"{count} LoRAs on page {page}, sorted by {sort_by}."
    if page > 1:
        return f"No LoRAs on page {page}: it is past the last page of this search. Go back with *Previous*, or to page 1."
    return "No LoRAs found for this search; try fewer or other words."


def card_html(evaluation: Evaluation) -> str:
    """The card's safe HTML (see `card_render`) in a scrollable box."""
    body = evaluation.card.html or f"<p>{html.escape(evaluation.summary.repo_id)} has no model card.</p>"
    return f'<div class="prose" style="max-height:600px;overflow:auto">{body}</div>'


def build_discover_tab(space: LoraSpace, browser_id: BrowserId) -> DiscoverHandles:
    """Lay out the Discover tab inside the caller's `gr.Tab`; returns the handles Generate connects to."""
    settings = space.settings
    gr.Markdown(
        f"Search the Hub for LoRAs made for **{settings.hub_base_model}**"
        + (" (the model tiny mode stands in for)" if settings.is_tiny else "")
        + ". Open one to read its card, check its file against the current base and see a verdict; "
        "**Use in Generate** puts it in the next free slot."
    )
    with gr.Row(equal_height=True):
        query = gr.Textbox(label="Search", placeholder="watercolor, anime, realism ...", scale=4, elem_id="discover-query")
        sort = gr.Dropdown(list(SORTS), value="downloads", label="Sort by", scale=1, elem_id="discover-sort")
        page = gr.Number(value=1, precision=0, minimum=1, label="Page", scale=1, elem_id="discover-page")
        search_button = gr.Button("Search", variant="primary", scale=1, elem_id="discover-search")
    with gr.Row(equal_height=True):
        status = gr.Markdown(elem_id="discover-status")
        previous_button = gr.Button("◀ Previous", size="sm", scale=0, min_width=120, interactive=False, elem_id="discover-previous")
        next_button = gr.Button("Next ▶", size="sm", scale=0, min_width=120, interactive=False, elem_id="discover-next")
    results = gr.State([])
    with gr.Accordion("Start here: hand-picked LoRAs", open=True) as starter_box:
        starter = gr.Dataframe(
            headers=STARTER_COLUMNS, value=starter_rows(), interactive=False, wrap=True, elem_id="discover-starter"
        )
    gallery = gr.Gallery(label="Previews (click one to open it)", columns=6, height=220, visible=False, elem_id="discover-previews")
    table = gr.Dataframe(headers=RESULT_COLUMNS, interactive=False, wrap=True, visible=False, elem_id="discover-results")
    with gr.Row(equal_height=True):
        open_box = gr.Textbox(label="Open a LoRA", placeholder="user/repo (or click a row above)", scale=4, elem_id="discover-open-box")
        open_button = gr.Button("Open", scale=1, elem_id="discover-open")
    verdict = gr.Markdown(elem_id="discover-verdict")
    selected = gr.State(None)
    with gr.Row():
        use_button = gr.Button("Use in Generate", variant="primary", interactive=False, elem_id="discover-use")
        use_status = gr.Markdown(elem_id="discover-use-status")
    images = gr.Gallery(label="Images from the card", columns=4, height=260, visible=False, elem_id="discover-images")
    with gr.Accordion("Model card", open=True):
        card = gr.HTML(elem_id="discover-card")
    with gr.Accordion("File header inspection (no download)", open=True):
        inspection = gr.Markdown(elem_id="discover-inspection")
        with gr.Accordion("Full report (JSON)", open=False):
            report = gr.JSON(label="Report", elem_id="discover-report")

    def on_search(text, sort_by, page_number, *, visitor, token):
        number = max(int(page_number or 1), 1)
        found = space.discover.search(text or "", sort=sort_by, limit=PAGE_SIZE, page=number, token=token)
        items = [item.to_dict() for item in found]
        return (
            items, search_note(len(items), number, sort_by), gr.Gallery(value=previews(items), visible=bool(previews(items))),
            gr.Dataframe(value=result_rows(items), visible=True), gr.Accordion(open=False),
            gr.Button(interactive=number > 1), gr.Button(interactive=len(items) == PAGE_SIZE),
        )

    def on_open(repo_id, *, visitor, token):
        if not (repo_id or "").strip():
            return [gr.skip()] * 8
        evaluation = space.discover.evaluate(repo_id, token=token)
        summary: LoraSummary = evaluation.summary
        usable = usable_for_generate(evaluation)
        chosen = {"source": summary.source, "repo_id": summary.repo_id, "trigger_words": summary.trigger_words} if usable else None
        return (
            verdict_markdown(evaluation),
            chosen,
            gr.Button(interactive=usable),
            gr.Gallery(value=[(url, "") for url in evaluation.card.images], visible=bool(evaluation.card.images)),
            card_html(evaluation),
            inspection_markdown(evaluation),
            evaluation.report.to_dict() if evaluation.report is not None else {},
            "",  # the last "Use in Generate" message belongs to the LoRA opened before
        )

    def pick_row(items: list[dict[str, Any]], event: gr.SelectData) -> str:
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        return items[row]["repo_id"] if 0 <= row < len(items) else gr.skip()

    def pick_starter(event: gr.SelectData) -> str:
        entries = starter_list()
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        return entries[row]["repo_id"] if 0 <= row < len(entries) else gr.skip()

    def pick_preview(items: list[dict[str, Any]], event: gr.SelectData) -> str:
        shown = [item for item in items if item["preview_url"]]
        return shown[event.index]["repo_id"] if 0 <= event.index < len(shown) else gr.skip()

    search_outputs = [results, status, gallery, table, starter_box, previous_button, next_button]
    search_inputs = [*browser_id, query, sort, page]
    open_outputs = [verdict, selected, use_button, images, card, inspection, report, use_status]
    searcher = with_caller(settings, on_search)
    opener = with_caller(settings, on_open)
    shown_on = {"api_visibility": "private", "show_progress_on": status}  # a failure's badge on the status line alone
    search_button.click(searcher, search_inputs, search_outputs, **shown_on)
    query.submit(searcher, search_inputs, search_outputs, **shown_on)
    sort.input(searcher, search_inputs, search_outputs, **shown_on)
    page.submit(searcher, search_inputs, search_outputs, **shown_on)
    for button, step in ((previous_button, -1), (next_button, 1)):
        button.click(
            lambda number, step=step: max(int(number or 1) + step, 1), page, page, api_visibility="private", show_progress="hidden"
        ).then(searcher, search_inputs, search_outputs, **shown_on)
    open_button.click(opener, [*browser_id, open_box], open_outputs, api_visibility="private")
    open_box.submit(opener, [*browser_id, open_box], open_outputs, api_visibility="private")
    for event in (
        table.select(pick_row, results, open_box, api_visibility="private"),
        gallery.select(pick_preview, results, open_box, api_visibility="private"),
        starter.select(pick_starter, None, open_box, api_visibility="private"),
    ):
        event.then(opener, [*browser_id, open_box], open_outputs, api_visibility="private")
    def search_after(event) -> None:
        event.then(searcher, search_inputs, search_outputs, **shown_on)

    return DiscoverHandles(browser_id, selected, use_button, use_status, space, query, page, search_after)


def use_in_generate(
    space: LoraSpace, chosen: dict[str, Any] | None, slot_values: list, *, visitor, token, progress=None
) -> tuple[Placement, list[str]]:
    """Download the opened LoRA once into the Hub cache (with the caller's token) and fill the next free slot.

    A file that fits no module of the base is refused from its header, before the download.

    Returns:
        Where it went (`generate.Placement`) and its trigger words.

    Raises:
        LoraFileError, HubError: nothing opened, a misfit, or the Hub refuses; each message names the repo.
    """
    if not chosen:
        from lora_space.core.errors import LoraFileError

        raise LoraFileError("Open a LoRA with a usable .safetensors file first, then press Use in Generate.")
    if progress is not None:
        progress(0.1, desc=f"Downloading {chosen['source']} into the Hub cache")
    resolved = space.fetch(chosen["source"], token=token, visitor=visitor)
    if progress is not None:
        progress(1.0, desc=f"Downloaded {chosen['source']}")
    placement = place_lora(slot_values, chosen["source"], DEFAULT_STRENGTH)
    words = list(dict.fromkeys(list(chosen.get("trigger_words") or []) + list(resolved.trigger_words)))
    return placement, words


def wire_discover_to_generate(handles: DiscoverHandles, controls: GenerateControls, tabs: gr.Tabs | None = None) -> None:
    """"Use in Generate": download once, fill the first free slot at 0.8 (opening the folded group
    when it lands there), add the trigger words, show Generate with a note saying where it went and
    an offer to switch the other slots off; then the library and the pickers list the download."""
    space = handles.space

    def on_use(chosen, prompt, *slot_values, visitor, token, progress):
        placement, words = use_in_generate(space, chosen, list(slot_values), visitor=visitor, token=token, progress=progress)
        prompt = insert_trigger_words(prompt or "", list(chosen.get("trigger_words") or []))
        switch = [gr.Tabs(selected="generate")] if tabs is not None else []
        return ["", prompt, *placement_updates(placement, words), *switch]  # the note is on Generate, not left here

    outputs = [handles.use_status, controls.prompt, *controls.placement_outputs] + ([tabs] if tabs is not None else [])
    controls.clear_stale_on(handles.use_button.click, own=[controls.slot_note, controls.solo_button])
    used = handles.use_button.click(
        with_caller(space.settings, on_use),
        [*handles.browser_id, handles.selected, controls.prompt, *controls.slots],
        outputs,
        api_visibility="private",
        show_progress_on=handles.use_status,  # the download's progress; never an overlay left on Generate's slots
    )
    controls.follow_library(used)  # the download is in the library now (a local run lists the Hub cache)
    # A name Generate did not know (the lesson's `watercolor_style`): its button searches Discover for it.
    hint = controls.discover_hint.click(
        lambda name: [name, 1] + ([gr.Tabs(selected="discover")] if tabs is not None else []),
        controls.hint_name,
        [handles.query, handles.page] + ([tabs] if tabs is not None else []),
        api_visibility="private",
        show_progress="hidden",
    )
    handles.search_after(hint)


def register_discover_endpoints(space: LoraSpace) -> None:
    """Add `/search_loras` (call inside the demo's Blocks)."""

    @api_errors
    def search_loras(
        query: str = "",
        base_model: str = "",
        sort: str = "downloads",
        limit: int = 24,
        page: int = 1,
        oauth_token: gr.OAuthToken | None = None,
    ) -> list[dict]:
        """Search the Hub for LoRAs made for a base model, best first; one Hub request per page.

        Args:
            query: free text matched against repo ids ("" for all).
            base_model: the base model's Hub id ("": the current base; tiny mode searches FLUX.1-dev).
            sort: "downloads", "likes", "trending" or "recent" (last modified).
            limit: results per page, 1..100.
            page: the page, from 1.
        Returns:
            One dict per LoRA: repo_id, author, downloads, likes, trigger_words, preview_url, license,
            last_modified, weight_file, base_model (plus trigger_words_from, gated, problem).
        """
        token = token_of(oauth_token)
        found = space.discover.search(query, base_model=base_model, sort=sort, limit=int(limit), page=int(page), token=token)
        return [item.to_dict() for item in found]

    gr.api(search_loras, api_name="search_loras")

