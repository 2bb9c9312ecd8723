"""`<lora:NAME:STRENGTH>` tags in prompts, and trigger words. Pure functions.

Tag grammar (the `lora` keyword in any case; spaces around the parts are ignored):

    <lora:NAME>             strength 1.0
    <lora:NAME:STRENGTH>    STRENGTH a decimal number from -2 to 3: 0.8, -0.5, 1, .5, 1e-2

NAME is a library name (`watercolor_style`, `styles/watercolor`), a Hub repo
(`user/repo`) or a file in a Hub repo (`user/repo/file.safetensors`). A name never holds
`:`, so a `:` inside a tag always starts the strength, and what follows it must be a
number (`<lora:name:abc>` is an error, not a name). A name also never holds
`< > \\ " | ? *` or control characters, never starts with `/` and has no `..` part: a
prompt cannot point outside the library.

The same LoRA (names compared case-insensitively) twice with the same strength counts
once; twice with different strengths is an error, as guessing which one was meant would
hide a typo.

Trigger words are put in front of the prompt, comma-separated ("wtrclr, portrait of ..."),
the usual place for FLUX LoRAs, and only when the prompt does not already hold them. They come
from files and model cards anyone can write, so every reader keeps them as `clean_trigger_words`
does: at most `MAX_TRIGGER_WORDS` words of at most `MAX_WORD_CHARS` characters each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import PromptError

MIN_STRENGTH = -2.0
MAX_STRENGTH = 3.0
DEFAULT_MAX_CHARS = 4000


_OPEN = re.compile(r"<\s*lora\s*(?=[:>])", re.IGNORECASE)
# One way to match each number (`\d+\.?\d*` splits a run of digits in n ways: quadratic on a long one).
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_BAD_NAME_CHARS = re.compile(r'[<>:\\"|?*\x00-\x1f\x7f]')
_HUB_PART = re.compile(r"[\w][\w.-]*")
_QUOTE_LIMIT = 80
MAX_TRIGGER_WORDS = 32
"""Trigger words kept per LoRA (a card or file listing thousands would bury the prompt)."""
MAX_WORD_CHARS = 200
"""A longer "trigger word" would fill the prompt; it is left out."""
MAX_INSERTED_WORDS = 6 * MAX_TRIGGER_WORDS
_EXAMPLE = "<lora:watercolor_style:0.8>"


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:...>` tag: the name, its strength, and where it stood in the prompt."""

    name: str
    strength: float
    span: tuple[int, int]
    source_text: str


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt with its tags taken out.

    Attributes:
        text: the prompt without tags, whitespace collapsed to single spaces, no space before
            `,` or `.`, no empty `, ,` items and no leading or trailing commas.
        raw: the prompt as given.
        tags: the tags in prompt order, each LoRA once.
    """

    text: str
    raw: str
    tags: tuple[LoraTag, ...]


def _quoted(source: str) -> str:
    if len(source) > _QUOTE_LIMIT:
        source = source[: _QUOTE_LIMIT - 1] + "…"
    return f"'{source}'"


def check_name(name: str, *, tag: str | None = None) -> str:
    """Return `name` stripped if it can stand in a tag; raise `PromptError` if not.

    Args:
        name: a library name, `user/repo` or `user/repo/file.safetensors`.
        tag: the tag the name came from, quoted in the message.
    """
    where = f"The tag {_quoted(tag)}" if tag else f"The LoRA name {_quoted(name)}"
    name = name.strip()
    if not name:
        raise PromptError(f"{where} has no LoRA name; write <lora:NAME> or <lora:NAME:STRENGTH>, e.g. {_EXAMPLE}.")
    bad = _BAD_NAME_CHARS.search(name)
    if bad:
        raise PromptError(
            f"{where} holds {bad.group()!r}, which a LoRA name cannot hold; "
            f"write <lora:NAME:STRENGTH> with one ':' before the strength, e.g. {_EXAMPLE}."
        )
    if name.startswith("/") or ".." in name.split("/") or "//" in name:
        raise PromptError(
            f"{where} is not a library name or Hub id; use a name from the library "
            "or 'user/repo' or 'user/repo/file.safetensors', without a leading '/' or '..'."
        )
    return name


def _strength(value: str, tag: str) -> float:
    value = value.strip()
    if not _NUMBER.fullmatch(value):
        raise PromptError(
            f"The tag {_quoted(tag)} has strength {value!r}, which is not a number; "
            f"write a number from {MIN_STRENGTH:g} to {MAX_STRENGTH:g} after the name, e.g. {_EXAMPLE}."
        )
    strength = float(value)
    if not MIN_STRENGTH <= strength <= MAX_STRENGTH:
        raise PromptError(
            f"The tag {_quoted(tag)} has strength {value}, outside {MIN_STRENGTH:g} to {MAX_STRENGTH:g}; "
            "use a strength in that range (1 is full strength, 0 turns the LoRA off)."
        )
    return strength


def find_tags(text: str) -> list[LoraTag]:
    """Every `<lora:...>` tag in `text`, in order, duplicates included.

    Raises:
        PromptError: a tag is unclosed, has no name, a bad name, or a bad strength.
    """
    tags: list[LoraTag] = []
    for match in _OPEN.finditer(text):
        start, end = match.start(), match.end()
        while end < len(text) and text[end] not in "<>\n":
            end += 1
        if end == len(text) or text[end] != ">":
            raise PromptError(
                f"The tag {_quoted(text[start:end].rstrip())} is not closed; end it with '>', e.g. {_EXAMPLE}."
            )
        source = text[start : end + 1]
        parts = text[match.end() : end].removeprefix(":").split(":")
        if len(parts) > 2:
            raise PromptError(
                f"The tag {_quoted(source)} has more than one ':'; a tag takes one strength: "
                f"<lora:NAME:STRENGTH>, e.g. {_EXAMPLE}."
            )
        name = check_name(parts[0], tag=source)
        strength = _strength(parts[1], source) if len(parts) == 2 else 1.0
        tags.append(LoraTag(name=name, strength=strength, span=(start, end + 1), source_text=source))
    return tags


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r" (?=[,.])", "", text)
    text = re.sub(r",(?:\s*,)+", ",", text)
    return text.strip(" ,")


def parse_prompt(text: str, *, max_chars: int = DEFAULT_MAX_CHARS) -> ParsedPrompt:
    """Split a prompt into its text and its `<lora:...>` tags.

    Args:
        text: the prompt as the user wrote it.
        max_chars: the longest prompt accepted, tags included.

    Returns:
        The tidied text (see `ParsedPrompt`) and the tags, each LoRA once.

    Raises:
        PromptError: the prompt is too long, a tag is malformed, or one LoRA is asked for
            with two strengths.
    """
    if len(text) > max_chars:
        raise PromptError(
            f"The prompt is {len(text):,} characters long; the limit is {max_chars:,}. Shorten it."
        )
    tags: list[LoraTag] = []
    seen: dict[str, LoraTag] = {}
    found = find_tags(text)
    for tag in found:
        first = seen.get(tag.name.casefold())
        if first is None:
            seen[tag.name.casefold()] = tag
            tags.append(tag)
        elif first.strength != tag.strength:
            raise PromptError(
                f"The prompt asks for LoRA '{tag.name}' twice with different strengths "
                f"({_quoted(first.source_text)} and {_quoted(tag.source_text)}); keep one of the two tags."
            )
    pieces, position = [], 0
    for tag in found:
        pieces.append(text[position : tag.span[0]])
        position = tag.span[1]
    pieces.append(text[position:])
    return ParsedPrompt(text=_tidy(" ".join(pieces)), raw=text, tags=tuple(tags))


def _holds(text: str, phrase: str) -> bool:
    pattern = r"\s+".join(re.escape(word) for word in phrase.split())
    return re.search(rf"(?<!\w){pattern}(?!\w)", text, re.IGNORECASE) is not None


def clean_trigger_words(words: Iterable[object], *, limit: int = MAX_TRIGGER_WORDS) -> list[str]:
    """Trigger words as the app keeps them, in time linear in their number.

    Args:
        words: candidate words (anything that is not a string is skipped).
        limit: the most words kept.

    Returns:
        The words stripped, without empty ones or ones longer than `MAX_WORD_CHARS`, each once
        (case ignored), in order, at most `limit` of them.
    """
    kept: list[str] = []
    seen: set[str] = set()
    for word in words:
        if len(kept) >= limit:
            break
        if not isinstance(word, str):
            continue
        word = word.strip()
        key = word.casefold()
        if word and len(word) <= MAX_WORD_CHARS and key not in seen:
            seen.add(key)
            kept.append(word)
    return kept


def insert_trigger_words(text: str, trigger_words: Iterable[str]) -> str:
    """Put each trigger word the prompt lacks in front of it: "wtrclr, portrait of ...".

    A word counts as present when the prompt, or a word already put in front, holds it as
    a whole word or phrase, in any case. Words keep their given order; empty ones are skipped,
    and at most `MAX_INSERTED_WORDS` are looked at (each is compared with those before it).
    """
    missing: list[str] = []
    for word in clean_trigger_words(trigger_words, limit=MAX_INSERTED_WORDS):
        word = " ".join(word.split())
        if word and not _holds(text, word) and not any(_holds(other, word) for other in missing):
            missing.append(word)
    if not missing:
        return text
    return ", ".join([*missing, text]) if text else ", ".join(missing)


def build_model_prompt(parsed: ParsedPrompt, loras: Iterable[tuple[Sequence[str], float]]) -> str:
    """The prompt as sent to the model: tags removed, trigger words in front.

    Args:
        parsed: the parsed prompt.
        loras: `(trigger_words, strength)` for every LoRA in use, in order; a LoRA at
            strength 0 is off, and its trigger words are not inserted.
    """
    words = [word for trigger_words, strength in loras if strength != 0 for word in trigger_words]
    return insert_trigger_words(parsed.text, words)
