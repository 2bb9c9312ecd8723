"""Who a request is for, as the UI and the API see it (API.md "Who owns what").

Off a Space every request is the one local user's. On a Space a visitor is the signed-in Hub
user, else the anonymous id their browser keeps across reloads, else the `gradio_client`
session. The browser's id is 128 random bits made here on the server (`owners.new_browser_id`):
each page session gets one in a `gr.State`, and the page's load event stores it in the
browser's `gr.BrowserState` when the browser has none yet (`BrowserId`). Handlers declare
`request: gr.Request` and `profile: gr.OAuthProfile | None` (gradio injects both) and take the
two parts of the browser id as their first inputs.

Each visitor also carries the client address the request came from (`client_address`), which
the bounds no identity resets count by (`fairness.VisitorGate`).
"""

from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import gradio as gr

from lora_space.core.settings import Settings
from lora_space.ui.errors import user_errors
from lora_space.visitors.owners import (
    LOCAL,
    Visitor,
    browser_secret,
    is_browser_id,
    new_browser_id,
)

STORAGE_KEY = "lora_space_visitor"


def client_address(request: gr.Request | None, proxy_hops: int) -> str:
    """The address a request came from, as far as it can be trusted ("" when unknown).

    Which `X-Forwarded-For` value to trust: a client may send the header with any addresses
    it likes, and each reverse proxy in front of the app appends the address *it* saw connect.
    So only the last `proxy_hops` entries were written by proxies we run behind, and the entry
    `proxy_hops` from the right is the address that connected to the outermost of them; every
    entry left of it is the client's own claim and is ignored (taking the first entry, as many
    apps do, would let one script be any number of addresses). On a Space the app is reached
    only through Hugging Face's proxy, which appends the address that connected to it, as
    proxies do (`proxy_hops` 1, `Settings.proxy_hops`; a deployment behind more proxies sets
    `LORA_SPACE_PROXY_HOPS`). With no proxy (`proxy_hops` 0), or fewer entries than proxies, the
    address is the TCP peer, `request.client.host` (uvicorn already replaces it by the header's
    last entry when the peer is in its `FORWARDED_ALLOW_IPS`, 127.0.0.1 by default: a proxy on
    the same host). IPv6 addresses count by their /64, which one subscriber usually holds whole.
    """
    if request is None:
        return ""
    headers = getattr(request, "headers", None) or {}
    # Every X-Forwarded-For line, in order: a proxy may append a line rather than extend the first.
    lines = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") else [headers.get("x-forwarded-for", "")]
    entries = [entry.strip() for line in lines if line for entry in line.split(",") if entry.strip()]
    client = getattr(request, "client", None)
    address = entries[-proxy_hops] if proxy_hops and len(entries) >= proxy_hops else str(getattr(client, "host", "") or "")
    try:
        parsed = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address[:64]
    return str(ipaddress.ip_network(f"{parsed}/64", strict=False)) if parsed.version == 6 else str(parsed)


def visitor_of(
    settings: Settings,
    request: gr.Request | None,
    profile: gr.OAuthProfile | None = None,
    browser_id: str | None = None,
    fresh_id: str | None = None,
) -> Visitor:
    """The owner of this request (see the module docstring), with the address it came from.

    `browser_id` is None for API calls; from the page it is the id the browser stored, or ""
    for an event that runs before the page's load event has stored one: that event gets the
    page session's `fresh_id`, which the load event stores (`fill_browser_id`), so a visitor's
    first upload is theirs after the load too.
    """
    if not settings.on_space:
        return LOCAL
    address = client_address(request, settings.proxy_hops)
    session = getattr(request, "session_hash", None) if request is not None else None
    if profile is not None and getattr(profile, "username", None):
        visitor = Visitor("hub", profile.username)
    elif is_browser_id(browser_id):
        visitor = Visitor("browser", browser_id)  # type: ignore[arg-type]
    elif browser_id is not None and is_browser_id(fresh_id):
        visitor = Visitor("browser", fresh_id)  # type: ignore[arg-type]
    elif session:
        visitor = Visitor("session", session)
    else:
        visitor = Visitor("session", new_browser_id())  # no way to find it again: a one-off visitor
    return replace(visitor, address=address)


OAUTH_VARIABLES = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")


def sign_in_missing(settings: Settings) -> list[str]:
    """What *Sign in with Hugging Face* lacks on a Space, as the variables' names ([] when it works).

    Gradio's login button works on huggingface.co (`SYSTEM=spaces`) with the OAuth variables the
    platform sets for a Space whose README says `hf_oauth: true` (gradio reads them at import).
    Elsewhere gradio would mock the login with the machine's own Hub login (a `whoami()` call at
    start, which fails offline or without a token), and on a Space without the variables it
    refuses to start. Off a Space there is no button, by design: nothing is missing.
    """
    if not settings.on_space:
        return []
    from gradio import oauth, utils

    missing = [] if utils.get_space() else ["SYSTEM=spaces"]
    return missing + [name for name in OAUTH_VARIABLES if not getattr(oauth, name, None)]


def sign_in_off_line(missing: list[str]) -> str:
    """One line saying that visitors cannot sign in, why, and how a Space's owner turns it on."""
    return (
        f"Sign-in with Hugging Face is off ({', '.join(missing)} not set): visitors are anonymous, and Hub calls "
        "from the page are made without a login (scripts can still pass oauth_token=). On huggingface.co, add "
        "`hf_oauth: true` to the README's header (this repo's README has it); a local run with SPACE_ID has no sign-in."
    )


@dataclass(frozen=True)
class BrowserId:
    """The page's anonymous visitor id, in two parts that every page event takes first (`[*browser_id, ...]`).

    Attributes:
        stored: the id the browser keeps in its localStorage across reloads and app restarts
            (encrypted with `owners.browser_secret`, which gradio publishes: the id itself, 128
            random bits, is what protects a visitor).
        fresh: a new id made on the server for this page session (`owners.new_browser_id`); the
            load event stores it when the browser has none (`fill_browser_id`).
        known: that load event, which `on_visitor_known` listeners follow.
    """

    stored: gr.BrowserState
    fresh: gr.State
    known: Any = field(default=None, compare=False)  # the page's load event (`build_browser_id`)

    def __iter__(self) -> Iterator[gr.components.Component]:
        return iter((self.stored, self.fresh))


class FreshId(str):
    """A new visitor id (`owners.new_browser_id`) that is a new one again in every copy.

    `gr.State` gives each page session its own deep copy of its initial value, made on the
    session's first event: with this value, each page session gets its own fresh id, made on the
    server, whichever of its events runs first. (A callable initial value would be called again
    by a load event of gradio's own, racing the events that already saw the first value.)
    """

    def __new__(cls) -> FreshId:
        return super().__new__(cls, new_browser_id())

    def __deepcopy__(self, memo: dict) -> FreshId:
        return FreshId()


def build_browser_id(settings: Settings, demo: gr.Blocks) -> BrowserId:
    """The two parts of the page's visitor id (see `BrowserId`) and the load event that stores a
    new browser's fresh id; `on_visitor_known` listeners run after it (call inside `demo`)."""
    stored = gr.BrowserState("", storage_key=STORAGE_KEY, secret=browser_secret(settings))
    fresh = gr.State(FreshId())
    known = demo.load(fill_browser_id, [stored, fresh], stored, api_visibility="private")  # a new browser keeps its fresh id
    return BrowserId(stored, fresh, known)


def on_visitor_known(browser_id: BrowserId, fn: Callable, inputs, outputs, **options):
    """Run the event handler `fn` once a page knows its visitor (after its load event has stored
    the browser's id): for what depends on who the visitor is (their LoRAs, their jobs).

    Not on `browser_id.stored.change`: gradio 6 fires a BrowserState's change again whenever an
    update without a value (`gr.Dropdown(choices=...)`, `gr.Button(visible=...)`) re-renders the
    page, so listeners sending such updates set each other off without end (10 requests a second
    from each open page, each scanning the library).

    Returns:
        The event, for `.then`.
    """
    return browser_id.known.then(fn, inputs, outputs, **options)


def fill_browser_id(stored: str | None, fresh: str) -> str:
    """On page load: keep the browser's id, or store this page session's fresh one (see `visitor_of`)."""
    return stored if is_browser_id(stored) else str(fresh)  # type: ignore[return-value]


@dataclass(frozen=True)
class Caller:
    """Who calls, for one request: the owner, and their own Hub token (never stored)."""

    visitor: Visitor
    token: str | None = None


def caller_of(
    settings: Settings,
    request: gr.Request | None,
    profile: gr.OAuthProfile | None = None,
    browser_id: str | None = None,
    oauth_token: gr.OAuthToken | None = None,
    fresh_id: str | None = None,
) -> Caller:
    return Caller(visitor_of(settings, request, profile, browser_id, fresh_id), token_of(oauth_token))


def token_of(oauth_token: gr.OAuthToken | None) -> str | None:
    """The caller's own Hub token, passed down for this call only (None when not signed in)."""
    return oauth_token.token if oauth_token else None


def with_caller(settings: Settings, handler: Callable) -> Callable:
    """Make `handler(*values, visitor=..., token=...)` a UI event handler that knows its caller.

    The event's first two inputs must be the browser id's parts (`[*browser_id, ...]`, see
    `BrowserId`); gradio injects the request, the signed-in profile and the OAuth token. A `progress` parameter of `handler`
    gets the event's progress bar. Errors become messages (`user_errors`).
    """
    takes_progress = "progress" in inspect.signature(handler).parameters

    def call(browser_id, fresh_id, request, profile, oauth_token, progress, values):
        caller = caller_of(settings, request, profile, browser_id, oauth_token, fresh_id)
        extra = {"progress": progress} if takes_progress else {}
        return handler(*values, visitor=caller.visitor, token=caller.token, **extra)

    if inspect.isgeneratorfunction(handler):

        def stream(
            browser_id,
            fresh_id,
            request: gr.Request,
            profile: gr.OAuthProfile | None,
            oauth_token: gr.OAuthToken | None,
            progress=gr.Progress(),
            *values,
        ):
            yield from call(browser_id, fresh_id, request, profile, oauth_token, progress, values)

        return user_errors(stream)

    def run(
        browser_id,
        fresh_id,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
        oauth_token: gr.OAuthToken | None,
        progress=gr.Progress(),
        *values,
    ):
        return call(browser_id, fresh_id, request, profile, oauth_token, progress, values)

    return user_errors(run)
