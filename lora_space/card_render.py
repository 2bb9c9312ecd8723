"""Render a Hub model card safely: its text is untrusted.

A card is Markdown that may hold raw HTML, `<script>`, tracking images and `javascript:` links.
`render_card` parses it with markdown-it and rebuilds every piece that could carry code or
reach another site, so the HTML it returns is safe by construction:

- raw HTML never passes: `<script>`, `<style>`, `<iframe>` ... blocks are dropped with their
  content; other tags are dropped and their text kept (escaped); an `<img>` tag becomes an
  image under the rule below;
- images come only from the Hub endpoint (the repo's own files, or URLs on the endpoint's
  host and its subdomains), as `.png`, `.jpg`, `.jpeg`, `.webp` or `.gif`, with no user name,
  query or fragment, rebuilt from their checked parts (`hub_image_url`); any other image is
  replaced by its alt text. The page shows them as `<img>` the browser loads: the server never
  fetches a card's image;
- links keep only `http`, `https`, `mailto` and in-page `#` targets, open in a new tab with
  `rel="nofollow noopener noreferrer"`; relative links point at the repo's files on the Hub.

The images a card shows (widget outputs, Markdown images, `<img>` tags) are listed in order,
so the page can show them in a gallery.
"""

from __future__ import annotations

import html
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

MAX_LINK_SPAN = 1000
"""A `[` whose `]` is further than this (or missing) cannot open a link here and is escaped first."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
LINK_SCHEMES = ("http", "https", "mailto")
DROPPED_ELEMENTS = ("script", "style", "iframe", "object", "embed", "noscript", "template", "svg", "math", "form", "textarea", "select")
FRONT_MATTER = re.compile(r"\A\s*---\r?\n.*?\r?\n---[ \t]*(\r?\n|\Z)", re.DOTALL)
_DROPPED = re.compile(r"<(%s)\b.*?(</\1\s*>|\Z)" % "|".join(DROPPED_ELEMENTS), re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?(-->|\Z)", re.DOTALL)
_IMG = re.compile(r"<img\b[^>]{0,4000}>", re.IGNORECASE)  # bounded: linear on any card, however hostile
_TAG = re.compile(r"</?[A-Za-z][^>]{0,4000}>|<![^>]{0,4000}>|<\?[^>]{0,4000}>")
_HOST = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")
_ATTRIBUTE = r"""\b%s\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))"""


@dataclass(frozen=True)
class RenderedCard:
    """A model card made safe to show.

    Attributes:
        html: the card body as HTML with no raw HTML of the author's, no script, only Hub images.
        images: the Hub URLs of the card's images, in order, without duplicates.
        dropped_images: how many images were left out because they are not on the Hub.
        truncated: the card was longer than what was read.
    """

    html: str
    images: list[str] = field(default_factory=list)
    dropped_images: int = 0
    truncated: bool = False


def hub_image_url(src: str, *, repo_id: str, endpoint: str, revision: str = "main") -> str | None:
    """The Hub URL of an image a card names, or None when it is not an image on the Hub.

    A relative path is a file of the repo (`images/a.png` -> `<endpoint>/<repo>/resolve/<rev>/images/a.png`);
    an absolute path is on the endpoint; a full URL must be on the endpoint's host (or a subdomain,
    such as the Hub's CDN). `blob/` URLs become `resolve/` URLs. SVG and other types are refused.

    Python and browsers read some URLs differently (`http://evil\\@huggingface.co/x.png` is on
    the Hub for `urlsplit`, on `evil` for Chromium), so a URL with a backslash, a control
    character, a user name (`@`), a query or a fragment is refused, the host must be plain ASCII,
    and the URL returned is rebuilt from the parts that were checked. A query would also let
    `x.png?.svg` pass for an SVG, which Gradio's Gallery fetches on the server.
    """
    base = urlsplit(endpoint.rstrip("/"))
    src = html.unescape(src.strip())
    if "\\" in src or "?" in src or "#" in src or any(ord(char) < 0x20 or ord(char) == 0x7F for char in src):
        return None
    parts = urlsplit(src)
    if parts.scheme or parts.netloc:
        host = (parts.hostname or "").lower()
        allowed = base.hostname or ""
        try:
            port = parts.port
        except ValueError:
            return None
        if parts.scheme not in ("http", "https") or "@" in parts.netloc or not _HOST.fullmatch(host):
            return None
        if not (host == allowed or host.endswith("." + allowed)) or (host == allowed and port != base.port):
            return None
        path = posixpath.normpath("/" + unquote(parts.path).lstrip("/"))
        url = f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}{quote(path)}"
    elif parts.path.startswith("/"):
        url = f"{base.scheme}://{base.netloc}{quote(posixpath.normpath(unquote(parts.path)))}"
    else:
        path = posixpath.normpath(unquote(parts.path))
        if path.startswith("..") or path in ("", "."):
            return None
        url = f"{endpoint.rstrip('/')}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"
    if not urlsplit(url).path.lower().endswith(IMAGE_SUFFIXES):
        return None
    return re.sub(r"^(https?://[^/]+/[^/]+/[^/]+)/blob/", r"\1/resolve/", url)


def widget_examples(card_data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """`(prompt, image path or URL)` of each widget example of a card's metadata (either may be "")."""
    widget = card_data.get("widget")
    items = widget if isinstance(widget, list) else [widget] if isinstance(widget, dict) else []
    examples = []
    for item in items:
        if not isinstance(item, dict):
            continue
        text = item.get("text") if isinstance(item.get("text"), str) else ""
        output = item.get("output")
        url = output.get("url") if isinstance(output, dict) and isinstance(output.get("url"), str) else ""
        examples.append((text.strip(), url.strip()))
    return examples


def card_body(text: str) -> str:
    """The Markdown of a card without its YAML front matter."""
    return FRONT_MATTER.sub("", text, count=1)


def _attribute(tag: str, name: str) -> str:
    match = re.search(_ATTRIBUTE % name, tag, re.IGNORECASE)
    return html.unescape(next((group for group in match.groups() if group is not None), "")) if match else ""


class _Renderer:
    """One card's rendering: collects the Hub images it lets through."""

    def __init__(self, repo_id: str, endpoint: str, revision: str) -> None:
        self.repo_id, self.endpoint, self.revision = repo_id, endpoint.rstrip("/"), revision
        self.images: list[str] = []
        self.dropped = 0

    def image(self, src: str, alt: str) -> str:
        """Safe HTML for an image: the `<img>` when it is on the Hub, else its alt text."""
        url = hub_image_url(src, repo_id=self.repo_id, endpoint=self.endpoint, revision=self.revision)
        if url is None:
            self.dropped += 1
            return html.escape(f"[image not shown: {alt}]" if alt else "[image not shown]")
        if url not in self.images:
            self.images.append(url)
        return f'<img src="{html.escape(url)}" alt="{html.escape(alt)}" loading="lazy" referrerpolicy="no-referrer">'

    def raw_html(self, fragment: str) -> str:
        """The author's raw HTML as safe HTML: dropped elements gone, images checked, other tags stripped."""
        fragment = _COMMENT.sub("", _DROPPED.sub("", fragment))
        pieces, last = [], 0
        for match in _IMG.finditer(fragment):
            pieces.append(_plain(fragment[last : match.start()]))
            pieces.append(self.image(_attribute(match.group(0), "src"), _attribute(match.group(0), "alt")))
            last = match.end()
        pieces.append(_plain(fragment[last:]))
        return "".join(pieces).strip()

    def link(self, token: Token) -> bool:
        """Make a link safe in place; False when it must become plain text."""
        href = str(token.attrs.get("href", "")).strip()
        parts = urlsplit(href)
        if href.startswith("#"):
            return True
        if not parts.scheme and not parts.netloc:  # a file of the repo, or a path on the Hub
            path = posixpath.normpath(parts.path) if parts.path else ""
            if not path or path.startswith(".."):
                return False
            href = f"{self.endpoint}{path}" if path.startswith("/") else f"{self.endpoint}/{self.repo_id}/blob/{self.revision}/{path}"
        elif parts.scheme.lower() not in LINK_SCHEMES:
            return False
        token.attrs = {"href": href, "target": "_blank", "rel": "nofollow noopener noreferrer"}
        return True

    def inline(self, children: list[Token]) -> list[Token]:
        """The inline tokens with raw HTML and images replaced by safe HTML, bad links unwrapped."""
        result, unwrapped = [], 0
        for token in children:
            if token.type == "html_inline":
                if _IMG.match(token.content):
                    token = _html(self.image(_attribute(token.content, "src"), _attribute(token.content, "alt")))
                elif token.content.lower().startswith("<br"):
                    token = _html("<br>")
                else:
                    continue  # any other tag: dropped, the text around it stays
            elif token.type == "image":
                token = _html(self.image(str(token.attrs.get("src", "")), token.content))
            elif token.type == "link_open" and not self.link(token):
                unwrapped += 1
                continue
            elif token.type == "link_close" and unwrapped:
                unwrapped -= 1
                continue
            result.append(token)
        return result


def _defuse_brackets(text: str) -> str:
    """Escape every `[` that has no `]` within `MAX_LINK_SPAN` characters (matched as nesting).

    Such a bracket cannot open a link (CommonMark labels stop at 999 characters), and markdown-it
    scans from each one to the end of its paragraph, which is quadratic on a hostile card.
    """
    opened: list[int] = []
    escape: set[int] = set()
    for index, char in enumerate(text):
        if char == "[" and (index == 0 or text[index - 1] != "\\"):
            opened.append(index)
        elif char == "]" and opened:
            start = opened.pop()
            if index - start > MAX_LINK_SPAN:
                escape.add(start)
    escape.update(opened)
    if not escape:
        return text
    return "".join("\\[" if index in escape else char for index, char in enumerate(text))


def _plain(fragment: str) -> str:
    """The text of an HTML fragment without its tags, escaped."""
    return html.escape(html.unescape(_TAG.sub("", fragment)))


def _html(fragment: str) -> Token:
    token = Token("html_inline", "", 0)
    token.content = fragment
    return token


def render_card(
    text: str, *, repo_id: str, endpoint: str, revision: str = "main", truncated: bool = False,
    card_data: Mapping[str, Any] | None = None,
) -> RenderedCard:
    """Render a model card (`README.md`) as safe HTML; see the module docstring for the rules.

    Args:
        text: the card as read from the Hub (front matter included or not).
        repo_id: the repo, for its relative image paths and links.
        endpoint: the Hub; images must come from it.
        revision: the revision relative paths resolve at.
        truncated: the text was cut (a note is added at the end).
        card_data: the card's metadata; its widget images come first in `images`.

    Returns:
        The safe HTML and the Hub images, widget outputs first.
    """
    renderer = _Renderer(repo_id, endpoint, revision)
    for _, url in widget_examples(card_data or {}):
        if url:
            renderer.image(url, "")
    markdown = MarkdownIt("js-default", {"html": True, "linkify": False})
    tokens = markdown.parse(_defuse_brackets(card_body(text)))
    for token in tokens:
        if token.type == "html_block":
            safe = renderer.raw_html(token.content)
            token.content = f"<p>{safe}</p>\n" if safe else ""
        elif token.type == "inline" and token.children:
            token.children = renderer.inline(token.children)
    body = markdown.renderer.render(tokens, markdown.options, {})
    if truncated:
        body += "<p><em>The card is longer; only its beginning is shown.</em></p>\n"
    return RenderedCard(html=body, images=renderer.images, dropped_images=renderer.dropped, truncated=truncated)
