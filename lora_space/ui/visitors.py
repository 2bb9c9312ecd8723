"""Who a request is for, as the UI and the API see it (API.md "Who owns what").

Off a Space every request is the one local user's. On a Space a visitor is the signed-in Hub
user, else the anonymous id their browser keeps across reloads (a `gr.BrowserState` filled on
page load), else the `gradio_client` session. Handlers declare `request: gr.Request` and
`profile: gr.OAuthProfile | None` (gradio injects both) and take the browser id as an input.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from ..owners import LOCAL, Visitor, browser_secret, is_browser_id, new_browser_id
from ..settings import Settings
from .errors import user_errors

STORAGE_KEY = "lora_space_visitor"


def visitor_of(
    settings: Settings,
    request: gr.Request | None,
    profile: gr.OAuthProfile | None = None,
    browser_id: str | None = None,
) -> Visitor:
    """The owner of this request (see the module docstring).

    `browser_id` is None for API calls; from the page it is the stored id, or "" for an event
    that runs before the page's load event has stored one: that event gets the id the load
    event will store (`fill_browser_id`), so a visitor's first upload is theirs after the load too.
    """
    if not settings.on_space:
        return LOCAL
    if profile is not None and getattr(profile, "username", None):
        return Visitor("hub", profile.username)
    if is_browser_id(browser_id):
        return Visitor("browser", browser_id)  # type: ignore[arg-type]
    session = getattr(request, "session_hash", None) if request is not None else None
    if session and browser_id is not None:
        return Visitor("browser", first_browser_id(session))
    if session:
        return Visitor("session", session)
    return Visitor("session", new_browser_id())  # no way to find it again: a one-off visitor


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


def first_browser_id(session_hash: str) -> str:
    """The id a browser without one gets: derived from its first page session."""
    return hashlib.sha256(f"browser-id:{session_hash}".encode()).hexdigest()[:32]


def build_browser_id(settings: Settings, demo: gr.Blocks) -> gr.BrowserState:
    """The browser's anonymous visitor id, kept in its localStorage (encrypted with a secret
    stored in the data folder, so it survives app restarts); `fill_browser_id` sets it when the
    page loads, and `on_visitor_known` listeners run after that (call inside `demo`)."""
    state = gr.BrowserState("", storage_key=STORAGE_KEY, secret=browser_secret(settings))
    state.visitor_known = demo.load(fill_browser_id, state, state, api_visibility="private")  # type: ignore[attr-defined]
    return state


def on_visitor_known(browser_id: gr.BrowserState, fn: Callable, inputs, outputs, **options):
    """Run the event handler `fn` once a page knows its visitor (after its load event has stored
    the browser's id): for what depends on who the visitor is (their LoRAs, their jobs).

    Not on `browser_id.change`: gradio 6 fires a BrowserState's change again whenever an update
    without a value (`gr.Dropdown(choices=...)`, `gr.Button(visible=...)`) re-renders the page, so
    listeners sending such updates set each other off without end (10 requests a second from each
    open page, each scanning the library).

    Returns:
        The event, for `.then`.
    """
    return browser_id.visitor_known.then(fn, inputs, outputs, **options)  # type: ignore[attr-defined]


def fill_browser_id(current: str | None, request: gr.Request) -> str:
    """On page load: keep the browser's id, or give it its first one (see `visitor_of`)."""
    if is_browser_id(current):
        return current  # type: ignore[return-value]
    session = getattr(request, "session_hash", None)
    return first_browser_id(session) if session else new_browser_id()


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
) -> Caller:
    return Caller(visitor_of(settings, request, profile, browser_id), token_of(oauth_token))


def token_of(oauth_token: gr.OAuthToken | None) -> str | None:
    """The caller's own Hub token, passed down for this call only (None when not signed in)."""
    return oauth_token.token if oauth_token else None


def with_caller(settings: Settings, handler: Callable) -> Callable:
    """Make `handler(*values, visitor=..., token=...)` a UI event handler that knows its caller.

    The event's first input must be the browser id (`build_browser_id`); gradio injects the
    request, the signed-in profile and the OAuth token. A `progress` parameter of `handler`
    gets the event's progress bar. Errors become messages (`user_errors`).
    """
    takes_progress = "progress" in inspect.signature(handler).parameters

    def call(browser_id, request, profile, oauth_token, progress, values):
        caller = caller_of(settings, request, profile, browser_id, oauth_token)
        extra = {"progress": progress} if takes_progress else {}
        return handler(*values, visitor=caller.visitor, token=caller.token, **extra)

    if inspect.isgeneratorfunction(handler):

        def stream(
            browser_id,
            request: gr.Request,
            profile: gr.OAuthProfile | None,
            oauth_token: gr.OAuthToken | None,
            progress=gr.Progress(),
            *values,
        ):
            yield from call(browser_id, request, profile, oauth_token, progress, values)

        return user_errors(stream)

    def run(
        browser_id,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
        oauth_token: gr.OAuthToken | None,
        progress=gr.Progress(),
        *values,
    ):
        return call(browser_id, request, profile, oauth_token, progress, values)

    return user_errors(run)
