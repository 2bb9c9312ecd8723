"""Discover: search the Hub for LoRAs of the current base model, judge one, use it.

`Discover` is what the Discover tab and `/search_loras` call. Searches go to the Hub through
`hub_search` (one request per page) and are kept for `CACHE_SECONDS` in a cache on the
`Discover` object, so that paging back and re-sorting a result list that was complete do not
ask the Hub again. `evaluate` reads a repo's facts, its card (one ranged read) and its weight
file's header (ranged reads; nothing is downloaded), and states a verdict built only from
those facts. Nothing here imports gradio.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from lora_space.core.errors import HubError, LoraFileError
from lora_space.core.settings import Settings
from lora_space.hub import search as hub_search
from lora_space.hub.cards import (
    RenderedCard,
    clean_trigger_words,
    hub_image_url,
    render_card,
    trigger_words_from_card,
    widget_examples,
)
from lora_space.hub.client import PICKLE_SUFFIXES as HUB_PICKLE_SUFFIXES
from lora_space.hub.client import HubClient, pick_weight_file
from lora_space.hub.ids import is_repo_id
from lora_space.hub.search import HubModel
from lora_space.library import store as library
from lora_space.library.base import current_base
from lora_space.lora.inspect import InspectReport, inspect_header
from lora_space.lora.safefile import MAX_HEADER_BYTES, parse_header, read_local_header

DATA = Path(__file__).parent  # starter_loras.json, licenses.json
CACHE_SECONDS = 300.0
CACHE_ENTRIES = 64
MAX_LIMIT = 100
POPULAR_DOWNLOADS = 1000
POPULAR_LIKES = 50
PICKLE_SUFFIXES = tuple(HUB_PICKLE_SUFFIXES)
_WEIGHT_NAME = re.compile(r"""weight_name\s*=\s*["']([^"'\n]{1,200})["']""")
_PATH_LIKE = re.compile(r"[\w./-]{1,300}")  # bounded runs: linear on any card, however hostile


@dataclass(frozen=True)
class LoraSummary:
    """One search result (API.md `/search_loras`), with what the page shows beside it.

    Attributes:
        repo_id, author, downloads, likes, license, last_modified (ISO time), base_model: the Hub's facts.
        trigger_words: from the card (`instance_prompt`, ...), else the file's metadata (once
            evaluated), else the words every widget prompt of the card shares; `trigger_words_from`
            says which ("card", "metadata", "widget" or "").
        preview_url: a Hub URL of the card's first widget image (or the repo's first image), or "".
        weight_file: the `.safetensors` file to use (the one the card names, else `hub.client.pick_weight_file`'s
            choice); None when the repo has none.
        gated: downloads need an accepted licence and a login.
        problem: why it cannot be used as it is (pickle-only, no weights), or None.
    """

    repo_id: str
    author: str
    downloads: int
    likes: int
    trigger_words: list[str]
    preview_url: str
    license: str
    last_modified: str
    weight_file: str | None
    base_model: str
    trigger_words_from: str = ""
    gated: bool = False
    problem: str | None = None

    @property
    def source(self) -> str:
        """What a Generate slot calls it: `user/repo/file.safetensors`."""
        return f"{self.repo_id}/{self.weight_file}" if self.weight_file else self.repo_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Evaluation:
    """What opening a result shows: facts, the safe card, its images, the header inspection, a verdict."""

    summary: LoraSummary
    card: RenderedCard
    report: InspectReport | None  # the weight file's header inspected; None when it could not be read
    verdict: list[str]
    notes: list[str] = field(default_factory=list)  # what could not be read, and why
    example_prompts: list[str] = field(default_factory=list)


def _load(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def starter_list() -> list[dict[str, str]]:
    """The curated starter LoRAs (`starter_loras.json`), each with its category's description."""
    data = _load("starter_loras.json")
    return [entry | {"category_info": data["categories"][entry["category"]]} for entry in data["loras"]]


def licence_facts(licence: str) -> dict[str, Any] | None:
    """What `licenses.json` says about a licence id, or None when it is not listed."""
    return _load("licenses.json")["licenses"].get(licence.lower().strip()) if licence else None


def _licence(card: dict[str, Any]) -> str:
    value = card.get("license")
    value = value[0] if isinstance(value, list) and value else value
    if value == "other" and isinstance(card.get("license_name"), str):
        return card["license_name"]
    return value if isinstance(value, str) else ""


def _base_model(card: dict[str, Any], wanted: str) -> str:
    bases = card.get("base_model")
    bases = [bases] if isinstance(bases, str) else [b for b in bases if isinstance(b, str)] if isinstance(bases, list) else []
    return wanted if wanted in bases else (bases[0] if bases else "")


def shared_widget_words(prompts: list[str]) -> list[str]:
    """The comma-separated parts every one of two or more example prompts holds (case-insensitive),
    kept as `clean_trigger_words` keeps trigger words; linear in the prompts' length."""
    if len(prompts) < 2:
        return []
    parts = [[part.strip() for part in prompt.split(",") if part.strip()] for prompt in prompts]
    others = [{part.casefold() for part in other} for other in parts[1:]]
    return clean_trigger_words(part for part in parts[0] if all(part.casefold() in other for other in others))


def _hub_id(value: str, what: str) -> str:
    """`value` as a Hub repo id ('user/repo', checked as huggingface_hub checks it) before any request.

    Raises:
        LoraFileError: not text, not one '/', or characters a Hub id cannot hold (the message says the form).
    """
    text = value.strip() if isinstance(value, str) else ""
    if not is_repo_id(text):
        shown = str(value)[:100]
        raise LoraFileError(
            f"{what} {shown!r} is not a Hub repo id; write it as 'user/repo' (letters, digits, '-', '_' and '.'), "
            "e.g. 'black-forest-labs/FLUX.1-dev'."
        )
    return text


def choose_weight_file(repo_id: str, files: list[str] | tuple[str, ...], card_text: str = "") -> str | None:
    """The `.safetensors` file to use: the first the card names that the repo holds, else `hub.client.pick_weight_file`'s."""
    weights = [name for name in files if name.lower().endswith(".safetensors")]
    if not weights:
        return None
    named = [match.group(1) for match in _WEIGHT_NAME.finditer(card_text)]
    named += [run.rstrip(".") for run in _PATH_LIKE.findall(card_text) if ".safetensors" in run]
    for name in named:
        name = name.split("/resolve/main/")[-1].split("/blob/main/")[-1].removeprefix("./")
        if name in weights:
            return name
    return pick_weight_file(repo_id, [(name, 0) for name in weights])


def summarise(model: HubModel, *, endpoint: str, base_model: str, card_text: str = "") -> LoraSummary:
    """A result from what a search or `model_info` returned (and the card text, once read)."""
    card = model.card_data
    examples = widget_examples(card)
    preview = next(
        (url for _, src in examples if src and (url := hub_image_url(src, repo_id=model.repo_id, endpoint=endpoint))),
        None,
    ) or next(
        (url for name in sorted(model.files) if PurePosixPath(name).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
         and (url := hub_image_url(name, repo_id=model.repo_id, endpoint=endpoint))),
        "",
    )  # every preview passes the one check of card images (`hub_image_url`): the browser loads it, never the server
    words, origin = trigger_words_from_card(card), "card"
    if not words:
        words, origin = shared_widget_words([text for text, _ in examples if text]), "widget"
    weight = choose_weight_file(model.repo_id, model.files, card_text + "\n" + json.dumps(card, default=str))
    problem = None
    if weight is None:
        pickles = [name for name in model.files if name.lower().endswith(PICKLE_SUFFIXES)]
        problem = (
            f"It holds only pickle-format weights ({', '.join(pickles[:3])}), which can run code when loaded; "
            "LoRA Space loads only .safetensors files."
            if pickles else "It holds no .safetensors weight file."
        )
    return LoraSummary(
        repo_id=model.repo_id,
        author=model.author,
        downloads=model.downloads,
        likes=model.likes,
        trigger_words=words,
        preview_url=preview,
        license=_licence(card),
        last_modified=model.last_modified.isoformat() if model.last_modified else "",
        weight_file=weight,
        base_model=_base_model(card, base_model),
        trigger_words_from=origin if words else "",
        gated=bool(model.gated),
        problem=problem,
    )


def verdict(summary: LoraSummary, report: InspectReport | None, *, base_model: str) -> list[str]:
    """Short plain-text lines built only from the facts read: popularity, fit, trigger words, licence, access.

    They quote Hub text (trigger words, licence, base model), so a page shows them as text, not Markdown.
    """
    lines = []
    popular = summary.downloads >= POPULAR_DOWNLOADS or summary.likes >= POPULAR_LIKES
    lines.append(
        f"{'Popular' if popular else 'Not widely used yet'}: {summary.downloads:,} downloads (last 30 days), {summary.likes:,} likes."
    )
    if report is None and summary.weight_file:
        lines.append("Compatibility unknown: the weight file's header could not be read (see the note below).")
    elif report is None:
        pass  # no usable file: the last line says why
    elif report.compatible:
        lines.append(f"Compatible with {report.base_model}: {report.coverage:.0%} of its {report.num_modules} modules land on it "
                     f"({report.format} layout, rank {report.rank}).")
    else:
        lines.append(f"Not compatible with {report.base_model}: {report.reason}")
    if summary.base_model and summary.base_model != base_model:
        lines.append(f"Its card names {summary.base_model} as its base model, not {base_model}.")
    source = {"card": "its card", "metadata": "its file's metadata", "widget": "every example prompt of its card"}
    if summary.trigger_words:
        lines.append(f"Trigger words known (from {source[summary.trigger_words_from]}): {', '.join(summary.trigger_words)}.")
    else:
        lines.append("No trigger words declared: the LoRA may work without one, or the card does not say.")
    facts = licence_facts(summary.license)
    if not summary.license:
        lines.append("No licence declared: ask the author before any commercial use.")
    elif facts is None or facts["commercial"] is None:
        lines.append(f"Licence {summary.license}: LoRA Space has no facts about it; read it before commercial use.")
    else:
        allowed = "allows" if facts["commercial"] else "does not allow"
        note = f" ({facts['note']})" if facts.get("note") else ""
        lines.append(f"Licence {facts['name']} {allowed} commercial use of the LoRA{note}; the base model's licence applies too.")
    if summary.gated:
        lines.append("Gated: accept its conditions on the Hub and sign in before it can be used.")
    if summary.problem:
        lines.append(f"Cannot be used: {summary.problem}")
    return lines


class Discover:
    """Search and evaluation for one app (one base model); safe to share between users.

    The cache holds only public results and no token: results a token made visible (the
    caller's private repos) are returned to that caller but never kept.
    """

    def __init__(self, settings: Settings, *, ttl: float = CACHE_SECONDS, clock=time.monotonic) -> None:
        self.settings = settings
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        # (base, query, sort) -> (time fetched, public models in order, the Hub had no more)
        self._cache: dict[tuple[str, str, str], tuple[float, list[HubModel], bool]] = {}

    def _cached(self, base: str, query: str, sort: str, need: int) -> list[HubModel] | None:
        """Enough results from the cache: the same list, or a complete list of another sort, re-sorted."""
        now = self._clock()
        with self._lock:
            for key in [key for key, (moment, _, _) in self._cache.items() if now - moment > self.ttl]:
                del self._cache[key]
            entry = self._cache.get((base, query, sort))
            if entry is not None and (len(entry[1]) >= need or entry[2]):
                return entry[1]
            for (other_base, other_query, _), (_, models, complete) in self._cache.items():
                if complete and (other_base, other_query) == (base, query):
                    return sorted(models, key=_SORT_KEYS[sort], reverse=True)
        return None

    def _store(self, base: str, query: str, sort: str, models: list[HubModel], complete: bool) -> None:
        with self._lock:
            if len(self._cache) >= CACHE_ENTRIES:
                del self._cache[min(self._cache, key=lambda key: self._cache[key][0])]
            self._cache[(base, query, sort)] = (self._clock(), [m for m in models if not m.private], complete)

    def search(
        self, query: str = "", *, base_model: str = "", sort: str = "downloads", limit: int = 24, page: int = 1,
        token: str | None = None,
    ) -> list[LoraSummary]:
        """One page of LoRAs for `base_model` (default: the current base's Hub id), best first.

        Raises:
            LoraFileError: a bad sort, limit or page (the message says the allowed values).
            HubError: offline, unreachable, rate-limited, or the Hub refuses.
        """
        # 1. Check the request.
        if sort not in hub_search.SORTS:
            raise LoraFileError(f"sort={sort!r} is not one of {', '.join(hub_search.SORTS)}; use e.g. sort='downloads'.")
        if not 1 <= limit <= MAX_LIMIT:
            raise LoraFileError(f"limit={limit} is outside 1..{MAX_LIMIT}; ask for at most {MAX_LIMIT} results per page.")
        if page < 1 or page * limit > hub_search.MAX_RESULTS:
            raise LoraFileError(
                f"page={page} is outside 1..{hub_search.MAX_RESULTS // limit} for limit={limit}; refine the query to see other LoRAs."
            )
        base = _hub_id(base_model, "base_model") if base_model.strip() else self.settings.hub_base_model
        query = " ".join(query.split())
        need = page * limit
        # 2. The cache, else ONE request for everything up to this page.
        models = self._cached(base, query.casefold(), sort, need)
        if models is None:
            models = HubClient.for_caller(self.settings, token).search_loras(base, query=query, sort=sort, limit=need)
            self._store(base, query.casefold(), sort, models, complete=len(models) < need)
        # 3. This page's summaries.
        endpoint = self.settings.hf_endpoint
        return [summarise(model, endpoint=endpoint, base_model=base) for model in models[need - limit : need]]

    def evaluate(self, repo_id: str, *, token: str | None = None, weight_file: str | None = None) -> Evaluation:
        """Open one LoRA repo: facts, the card made safe, the weight header inspected, a verdict.

        Only ranged reads touch files: the card's first `MAX_CARD_BYTES` and the weight file's header.

        Raises:
            HubError: the repo cannot be read (not found, offline, unreachable). A card or header that
                cannot be read (a gated repo without access) is a note in the evaluation instead.
        """
        repo_id = _hub_id(repo_id, "repo_id")
        hub = HubClient.for_caller(self.settings, token)
        base = self.settings.hub_base_model
        # 1. The repo's facts (one request) and its card (one ranged read).
        model = hub.model_details(repo_id)
        notes: list[str] = []
        text, truncated = "", False
        if "README.md" in model.files:
            try:
                text, truncated = hub.read_text(repo_id, "README.md")
            except HubError as error:
                notes.append(f"The card could not be read: {error}")
        summary = summarise(model, endpoint=hub.endpoint, base_model=base, card_text=text)
        if weight_file and weight_file in model.files and weight_file.lower().endswith(".safetensors"):
            summary = replace(summary, weight_file=weight_file)
        card = render_card(text, repo_id=repo_id, endpoint=hub.endpoint, truncated=truncated, card_data=model.card_data)
        # 2. The weight file's header (ranged reads) and what it says on the current base.
        report = None
        if summary.weight_file:
            try:
                raw, size = hub.read_header(repo_id, summary.weight_file, max_header_bytes=MAX_HEADER_BYTES)
                header = parse_header(raw, size, name=f"{repo_id}/{summary.weight_file}")
                if not summary.trigger_words or summary.trigger_words_from == "widget":
                    words = library.metadata_trigger_words(header.metadata)
                    if words:
                        summary = replace(summary, trigger_words=words, trigger_words_from="metadata")
                inspected = inspect_header(
                    header, source=summary.source, base=current_base(self.settings, token=token),
                    trigger_words=summary.trigger_words, card=model.card_data,
                )
                report = inspected
            except (HubError, LoraFileError) as error:
                notes.append(f"The weight file's header could not be read: {error}")
        examples = [prompt for prompt, _ in widget_examples(model.card_data) if prompt]
        return Evaluation(summary, card, report, verdict(summary, report, base_model=base), notes, examples)

    def cached_entries(self) -> list[dict[str, Any]]:
        """Hub LoRAs already in the local Hub cache, as `/list_loras` entries (no Hub call).

        `name` is the source a slot or tag uses (`user/repo/file.safetensors`), `location` is
        `hub:user/repo/file.safetensors`, and `cached_from_hub` is true.
        """
        settings = self.settings
        exclude = {settings.base_model, settings.hub_base_model}
        entries = []
        for item in hub_search.cached_lora_files(exclude=sorted(exclude), max_bytes=settings.limits.max_lora_bytes):
            try:
                header = read_local_header(item.path)  # the one reader, with the engine's bounds
            except (LoraFileError, OSError):
                continue
            file_format = library.guess_format(header.tensors)
            if file_format == "unknown":
                continue  # not a LoRA (a model's weights, say)
            entries.append({
                "name": f"{item.repo_id}/{item.filename}",
                "location": f"hub:{item.repo_id}/{item.filename}",
                "size_bytes": item.size_bytes,
                "format": file_format,
                "trigger_words": library.metadata_trigger_words(header.metadata),
                "problem": None,
                "cached_from_hub": True,
            })
        return entries


_SORT_KEYS = {
    "downloads": lambda model: model.downloads,
    "likes": lambda model: model.likes,
    "trending": lambda model: model.trending_score,
    "recent": lambda model: model.last_modified.timestamp() if model.last_modified else 0.0,
}
