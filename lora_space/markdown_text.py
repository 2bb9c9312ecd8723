"""Text from files and the Hub as Markdown that shows it literally: the one escaping helper.

A LoRA's metadata, a model card, a file or tensor name or a recipe may hold `<img src=...>` (a
tracking image), `[click](https://...)` or a bare `https://...` (a link), `**` or `#`. Every
such text goes through `md_text` (or `md_code`) before it joins Markdown: the app's panels
(`gr.Markdown` renders links, images and safe HTML) and the model cards it publishes.
"""

from __future__ import annotations

import html
import re

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]#!|~$])")
_LINE_START = re.compile(r"^(\d*)([-+=.)])")
_AUTOLINK = re.compile(r"(:(?=//)|(?<=www)\.|@)", re.IGNORECASE)  # what GFM turns into a link: `x://`, `www.`, `a@b.c`


def md_text(text: object) -> str:
    """`text` as literal Markdown on one line: HTML, Markdown syntax and autolinks escaped.

    The escapes do not show once rendered: `<img src=x>` reads as itself, and no link, image,
    emphasis, heading or list comes out of it.
    """
    flat = " ".join(str(text).split())
    escaped = _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(flat, quote=False))
    escaped = _AUTOLINK.sub(r"\\\1", escaped)
    return _LINE_START.sub(r"\1\\\2", escaped)  # not a list item or a heading underline


def md_code(text: object) -> str:
    """`text` as an inline code span on one line, whatever backticks it holds."""
    flat = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"
