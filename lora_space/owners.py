"""Who owns what (API.md): the visitor a request is for, and the folders that are theirs.

A public Space has many visitors. What the Space's owner put in the shared library
(`LORA_SPACE_LORA_DIR`) is read-only for them; what a visitor adds (uploads, training jobs and
their LoRAs, baked blends) lives in that visitor's own area under the data folder and is
listed and usable by name only by them. A local run (no `SPACE_ID`) has one user, `LOCAL`,
who owns the shared library, as the course describes.

A visitor is named by `kind:name`: the signed-in Hub user (`hub:alice`), an anonymous id the
browser keeps across reloads (`browser:<32 hex>`), or a `gradio_client` session
(`session:<hash>`). Only `Visitor.id`, a hash of that name, is ever written to disk.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .settings import Settings

KINDS = ("local", "hub", "browser", "session")
_BROWSER_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Visitor:
    """The owner of a request.

    Attributes:
        kind: `local` (a local run: the one user), `hub` (signed in), `browser` (an anonymous
            id kept by the browser) or `session` (a `gradio_client` session).
        name: the Hub user name, the browser id or the session hash; empty for `local`.
        address: the client address the request came from (`ui.visitors.client_address`), for
            bounds no identity resets (`fairness.VisitorGate`); not part of who the visitor is.
    """

    kind: str
    name: str = ""
    address: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Visitor kind {self.kind!r} is not one of {', '.join(KINDS)}.")
        if self.kind != "local" and not self.name:
            raise ValueError(f"A {self.kind} visitor needs a name.")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def id(self) -> str:
        """32 hex characters naming the visitor on disk (a folder name, a job's owner)."""
        return "local" if self.is_local else hashlib.sha256(self.key.encode()).hexdigest()[:32]

    @property
    def is_local(self) -> bool:
        return self.kind == "local"


LOCAL = Visitor("local")


def new_browser_id() -> str:
    """A fresh anonymous visitor id (128 random bits, made here on the server) for the browser to keep.

    It is a bearer credential: whoever holds it acts as that anonymous visitor (README "Who owns what").
    """
    return secrets.token_hex(16)


def is_browser_id(value: object) -> bool:
    return isinstance(value, str) and _BROWSER_ID.fullmatch(value) is not None


def visitor_area(data_dir: Path, visitor: Visitor) -> Path:
    """The folder that holds what `visitor` added (made if missing): `data_dir/visitors/<id>`."""
    area = Path(data_dir) / "visitors" / visitor.id
    area.mkdir(parents=True, exist_ok=True)
    return area


def visitor_lora_dir(settings: Settings, visitor: Visitor) -> Path:
    """Where `visitor`'s LoRAs go: the shared library on a local run, else their own library."""
    if visitor.is_local:
        return settings.lora_dir
    return visitor_area(settings.data_dir, visitor) / "loras"


def readable_roots(settings: Settings, visitor: Visitor) -> list[Path]:
    """Folders whose files `visitor` may name by path: the shared library and what is theirs.

    On a local run that is the whole data folder (jobs, outputs); on a Space only the visitor's
    own area, so nobody reaches another visitor's files by guessing a path.
    """
    own = settings.data_dir if visitor.is_local else visitor_area(settings.data_dir, visitor)
    return [settings.lora_dir.resolve(), own.resolve()]


def secret_file(settings: Settings) -> Path:
    return settings.data_dir / ".visitor_secret"


def browser_secret(settings: Settings) -> str:
    """The key `gr.BrowserState` encrypts the stored id with, kept in the data folder so that the
    id stays readable after an app restart; made once.

    Not a secret: gradio publishes it in the page's `/config`. What protects a visitor is the id
    itself (128 random bits, `new_browser_id`), which only their browser holds.
    """
    path = secret_file(settings)
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if len(value) < 32:
        value = secrets.token_hex(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
        path.chmod(0o600)
    return value
