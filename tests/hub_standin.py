"""A local stand-in for the Hugging Face Hub HTTP API: a test fixture, never used by the app.

`HubStandIn` is a real HTTP server on 127.0.0.1 (stdlib `ThreadingHTTPServer`, a free port, a
background thread). Point `huggingface_hub` at it with `HfApi(endpoint=hub.endpoint)` (or the app
with `HF_ENDPOINT=hub.endpoint`). It answers the subset of the Hub API that huggingface_hub 2.4
uses for: `list_models`, `model_info`/`repo_info`, `list_repo_tree`/`list_repo_files`, file
resolve (`hf_hub_download`, ranged reads such as `parse_safetensors_file_metadata`), `whoami`,
`create_repo`, `delete_repo`, and commits (`create_commit`, `upload_file`) through `/api/validate-yaml`,
`preupload` and `commit`, with the Hub's JSON shapes and `X-Error-Code` headers.

Uploads always get the "regular" mode (content inline in the commit), and no response carries
an `X-Xet-*` header, so neither LFS nor Xet storage is ever asked for. Blobs live on disk under
`root`. Only model repos with `namespace/name` ids exist. Responses close the connection
(HTTP/1.0), so no client keeps a pooled connection to a stopped stand-in.

    with HubStandIn(root=tmp_path) as hub:
        hub.add_user("alice", token="hf_alice_token")
        hub.add_model("alice/watercolor-lora", files={"lora.safetensors": data, "README.md": card})
        HfApi(endpoint=hub.endpoint).model_info("alice/watercolor-lora")
        hub.bytes_served("/resolve/")
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import re
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, Self, get_args
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest
import yaml
from huggingface_hub import constants
from huggingface_hub.hf_api import ExpandModelProperty_T

logger = logging.getLogger(__name__)

LFS_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".png", ".jpg", ".jpeg", ".webp", ".gif", ".zip"}
LFS_MIN_SIZE = 10 * 1024 * 1024
CHUNK = 1024 * 1024
SORT_KEYS = {"downloads", "likes", "trendingScore", "lastModified", "createdAt"}
LIST_FIELDS = {"_id", "id", "modelId", "likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag",
               "library_name", "createdAt"}
FULL_FIELDS = LIST_FIELDS | {"author", "sha", "lastModified", "gated", "disabled", "siblings"}
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
FRONT_MATTER = re.compile(r"\A\s*---\r?\n(.*?)\r?\n---\s*(\r?\n|\Z)", re.DOTALL)


@dataclass(frozen=True)
class User:
    name: str
    token: str
    orgs: tuple[str, ...] = ()
    role: str = "write"  # "read" tokens may not create repos or commit
    # role "fineGrained": namespace -> permissions (e.g. ("repo.content.read", "repo.write")), as whoami-v2 lists them
    scoped: Mapping[str, tuple[str, ...]] | None = None


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    git_oid: str
    size: int
    lfs: bool


@dataclass(frozen=True)
class Revision:
    oid: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    repo_id: str
    private: bool
    gated: bool | str
    downloads: int
    likes: int
    trending_score: int
    tags: list[str] | None
    card_data: dict[str, Any] | None
    created_at: datetime
    last_modified: datetime
    history: list[Revision] = field(default_factory=list)
    granted: set[str] = field(default_factory=set)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    @property
    def head(self) -> Revision:
        return self.history[-1]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    range: str | None
    user: str | None  # the caller's name, never the token
    status: int
    bytes_sent: int


@dataclass(frozen=True)
class ReceivedCommit:
    oid: str
    summary: str
    description: str
    operations: list[dict[str, Any]]  # the NDJSON lines after the header, as sent
    files: dict[str, bytes]  # the files added, decoded


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    user: User | None

    def arg(self, name: str, default: str | None = None) -> str | None:
        return self.query.get(name, [default])[0]

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in {"1", "true"}


@dataclass(frozen=True)
class _FileBody:
    path: Path
    start: int
    length: int


@dataclass
class _Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | _FileBody = b""


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 data: dict[str, Any] | None = None):
        super().__init__(message)
        self.reply = _json_reply({"error": message, **(data or {})}, status)
        self.reply.headers["X-Error-Message"] = message
        if code:
            self.reply.headers["X-Error-Code"] = code
        self.reply.headers.update(headers or {})


def _json_reply(data: Any, status: int = 200) -> _Reply:
    return _Reply(status, {"Content-Type": "application/json"}, json.dumps(data).encode())


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _relation(card: Mapping[str, Any], tags: Sequence[str]) -> str:
    """How a repo relates to its base model, as the Hub infers it."""
    return str(card.get("base_model_relation") or ("adapter" if "lora" in tags else "finetune"))


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value] if isinstance(value, list) else []


def parse_front_matter(readme: str) -> dict[str, Any]:
    """The YAML block at the top of a model card, as the Hub's `cardData` (empty when absent)."""
    match = FRONT_MATTER.match(readme)
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) else {}


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a `Range` header asks for; None serves the whole file."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None  # absent or not understood: ignored, as HTTP allows
    first, last = match.groups()
    if first == "":  # a suffix range: the last `last` bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last or size - 1), size - 1)
    if start >= size or start > end:
        raise _HttpError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.hub._serve(self)

    do_HEAD = do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("hub stand-in: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubStandIn


class HubStandIn:
    """A Hub API server for tests; see the module docstring. Use as a context manager."""

    def __init__(self, root: Path, *, page_size: int = 1000) -> None:
        self.root = Path(root)
        self.page_size = page_size  # the most models one `/api/models` page holds
        self.honour_ranges = True  # False: resolve ignores `Range` and sends whole files, as some CDNs do
        self.outage: int | None = None  # an HTTP status (say 503) to answer every request with
        self.stall: float = 0.0  # seconds to wait before answering each request (a Hub that hangs)
        self.commit_failure: int | None = None  # an HTTP status (say 500) to answer commit requests with
        self.commits: defaultdict[str, list[ReceivedCommit]] = defaultdict(list)
        self.deleted: list[str] = []  # repo ids deleted through the API, in order
        self._users: dict[str, User] = {}
        self._repos: dict[str, Repo] = {}
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._log: list[RecordedRequest] = []
        self._counter = itertools.count()
        self._server: _Server | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., _Reply]]] = [
            ("GET", re.compile(r"/api/whoami-v2"), self._whoami),
            ("GET", re.compile(r"/api/models"), self._list_models),
            ("GET", re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)(/revision/(?P<rev>[^/]+))?"), self._model_info),
            ("GET", re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(/(?P<sub>.+))?"), self._tree),
            ("POST", re.compile(r"/api/repos/create"), self._create_repo),
            ("DELETE", re.compile(r"/api/repos/delete"), self._delete_repo),
            ("POST", re.compile(r"/api/validate-yaml"), self._validate_yaml),
            ("POST", re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)"), self._preupload),
            ("POST", re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)"), self._commit),
            ("GET HEAD", re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)"), self._resolve),
        ]

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="hub-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("the Hub stand-in is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------ test set-up API

    def add_user(self, name: str, *, token: str, orgs: Sequence[str] = (), role: str = "write",
                 scoped: Mapping[str, Sequence[str]] | None = None) -> User:
        """A user whose `token` authenticates reads, `whoami` and (role "write") writes.

        `scoped` makes it a fine-grained token (role "fineGrained"): it may write only to the
        namespaces whose permissions include "repo.write".
        """
        if scoped is not None:
            role = "fineGrained"
        user = User(name, token, tuple(orgs), role,
                    {key: tuple(value) for key, value in scoped.items()} if scoped is not None else None)
        self._users[token] = user
        return user

    def add_model(
        self,
        repo_id: str,
        *,
        files: Mapping[str, bytes | str | Path],
        downloads: int = 0,
        likes: int = 0,
        tags: Sequence[str] | None = None,
        gated: bool | str = False,
        private: bool = False,
        card_data: dict[str, Any] | None = None,
        last_modified: datetime | None = None,
        created_at: datetime | None = None,
        trending_score: int = 0,
    ) -> Repo:
        """A model repo with one commit holding `files` (str is UTF-8 text, Path is read from disk).

        `card_data` defaults to the YAML of `README.md`. The repo's tags are `tags` (default: the
        card's `tags`) plus what the Hub derives from the card: `base_model:X`,
        `base_model:RELATION:X` (RELATION is the card's `base_model_relation`, else `adapter`
        when tagged `lora`, else `finetune`) and `license:L`. `gated` is False, "auto" or
        "manual" (True means "auto").
        """
        if repo_id.count("/") != 1:
            raise ValueError(f"the Hub stand-in holds only namespace/name repo ids, not {repo_id!r}")
        moment = last_modified or datetime.now(UTC)
        repo = Repo(repo_id, private, "auto" if gated is True else gated, downloads, likes, trending_score,
                    list(tags) if tags is not None else None, card_data, created_at or moment, moment)
        stored = {path: self._store(path, _content(value)) for path, value in files.items()}
        repo.history.append(Revision(self._new_oid(repo_id), stored))
        with self._lock:
            self._repos[repo_id] = repo
        return repo

    def grant_access(self, repo_id: str, user: str) -> None:
        """Let `user` download a gated repo's files (as if their access request was accepted)."""
        self._repos[repo_id].granted.add(user)

    def file_bytes(self, repo_id: str, path: str) -> bytes:
        """The content of `path` at the head of `repo_id`."""
        return self._blob(self._repos[repo_id].head.files[path]).read_bytes()

    # ------------------------------------------------------------------ the log

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests answered so far, oldest first (waits for those in flight to finish)."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=10)
            return list(self._log)

    def reset_log(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=10)
            self._log.clear()

    def bytes_served(self, path_substring: str = "") -> int:
        """Body bytes written to the socket for the logged requests whose path holds `path_substring`."""
        return sum(r.bytes_sent for r in self.requests if path_substring in r.path)

    # ------------------------------------------------------------- storage

    def _blob(self, stored: StoredFile) -> Path:
        return self.root / "blobs" / stored.sha256

    def _store(self, path: str, content: bytes) -> StoredFile:
        sha256 = hashlib.sha256(content).hexdigest()
        blob = self.root / "blobs" / sha256
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(content)
        git_oid = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        is_lfs = PurePosixPath(path).suffix.lower() in LFS_SUFFIXES or len(content) >= LFS_MIN_SIZE
        return StoredFile(sha256, git_oid, len(content), is_lfs)

    def _new_oid(self, repo_id: str) -> str:
        return hashlib.sha1(f"{repo_id}:{next(self._counter)}:{datetime.now().isoformat()}".encode()).hexdigest()

    def card_data(self, repo: Repo) -> dict[str, Any]:
        if repo.card_data is not None:
            return repo.card_data
        readme = repo.head.files.get("README.md")
        return parse_front_matter(self._blob(readme).read_text("utf-8")) if readme else {}

    def tags(self, repo: Repo) -> list[str]:
        card = self.card_data(repo)
        tags = list(repo.tags) if repo.tags is not None else _as_list(card.get("tags"))
        relation = _relation(card, tags)
        for base in _as_list(card.get("base_model")):
            tags += [f"base_model:{base}", f"base_model:{relation}:{base}"]
        tags += [f"license:{card['license']}"] if isinstance(card.get("license"), str) else []
        return list(dict.fromkeys(tags))

    # ------------------------------------------------------------- access rules

    def _caller(self, headers: Message) -> User | None:
        auth = headers.get("Authorization")
        if not auth:
            return None
        user = self._users.get(auth.removeprefix("Bearer ").strip())
        if user is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return user

    @staticmethod
    def _is_member(user: User | None, namespace: str) -> bool:
        return user is not None and (user.name == namespace or namespace in user.orgs)

    def _readable(self, repo_id: str, user: User | None) -> Repo:
        repo = self._repos.get(repo_id)
        if repo is None or (repo.private and not self._is_member(user, repo.namespace)):
            raise _HttpError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, repo_id: str, user: User | None) -> Repo:
        repo = self._readable(repo_id, user)
        self._check_write(user, repo.namespace)
        return repo

    def _check_write(self, user: User | None, namespace: str) -> None:
        if user is None:
            raise _HttpError(401, "You must be authenticated to write to the Hub")
        can_write = user.role == "write" or (
            user.role == "fineGrained" and "repo.write" in (user.scoped or {}).get(namespace, ()))
        if not self._is_member(user, namespace) or not can_write:
            raise _HttpError(403, f"You don't have the rights to write to the namespace {namespace}")

    def _revision(self, repo: Repo, rev: str) -> Revision:
        if rev == "main":
            return repo.head
        for revision in repo.history:
            if revision.oid == rev:
                return revision
        raise _HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # ------------------------------------------------------------- dispatch

    def _serve(self, handler: _Handler) -> None:
        with self._lock:
            self._in_flight += 1
        try:
            url = urlsplit(handler.path)
            query = parse_qs(url.query, keep_blank_values=True)
            body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
            if self.stall:
                time.sleep(self.stall)
            user: User | None = None
            try:
                user = self._caller(handler.headers)
                reply = self._route(_Request(handler.command, url.path, query, handler.headers, body, user))
            except _HttpError as error:
                reply = error.reply
            except Exception as error:  # a stand-in bug: answer 500 and say so in the test log
                logger.exception("hub stand-in: %s %s failed", handler.command, handler.path)
                reply = _HttpError(500, f"the Hub stand-in failed: {error!r}").reply
            sent = self._send(handler, reply)
            record = RecordedRequest(handler.command, url.path, query, handler.headers.get("Range"),
                                     user.name if user else None, reply.status, sent)
            with self._lock:
                self._log.append(record)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _route(self, request: _Request) -> _Reply:
        if self.outage is not None:
            raise _HttpError(self.outage, "the Hub stand-in is down (a test outage)")
        for method, pattern, action in self._routes:
            match = pattern.fullmatch(request.path)
            if request.method in method.split() and match:
                return action(request, **{k: unquote(v) for k, v in match.groupdict().items() if v is not None})
        raise _HttpError(404, f"the Hub stand-in has no route for {request.method} {request.path}")

    @staticmethod
    def _send(handler: _Handler, reply: _Reply) -> int:
        body = reply.body
        length = body.length if isinstance(body, _FileBody) else len(body)
        handler.send_response(reply.status)
        for name, value in {**reply.headers, "Content-Length": str(length)}.items():
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command == "HEAD":
            return 0
        if isinstance(body, bytes):
            handler.wfile.write(body)
            return len(body)
        sent = 0
        try:
            with body.path.open("rb") as file:
                file.seek(body.start)
                while sent < body.length:
                    chunk = file.read(min(CHUNK, body.length - sent))
                    handler.wfile.write(chunk)
                    sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("hub stand-in: the client closed the connection after %d bytes", sent)
        return sent

    # ------------------------------------------------------------- JSON shapes

    def _model_json(self, repo: Repo, *, blobs: bool = False) -> dict[str, Any]:
        card, tags = self.card_data(repo), self.tags(repo)
        files = repo.head.files
        data: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "modelId": repo.repo_id, "author": repo.namespace, "sha": repo.head.oid,
            "lastModified": _iso(repo.last_modified), "createdAt": _iso(repo.created_at),
            "private": repo.private, "gated": repo.gated, "disabled": False, "downloads": repo.downloads,
            "likes": repo.likes, "trendingScore": repo.trending_score, "tags": tags,
            "pipeline_tag": card.get("pipeline_tag"), "library_name": card.get("library_name"), "cardData": card,
            "siblings": [self._sibling(path, stored, blobs) for path, stored in sorted(files.items())],
            "usedStorage": sum(stored.size for stored in files.values()),
        }
        bases = _as_list(card.get("base_model"))
        if bases:
            data["baseModels"] = {"relation": _relation(card, tags), "models": [{"id": base} for base in bases]}
        return {key: value for key, value in data.items() if value is not None}

    @staticmethod
    def _sibling(path: str, stored: StoredFile, blobs: bool) -> dict[str, Any]:
        if not blobs:
            return {"rfilename": path}
        lfs = {"size": stored.size, "sha256": stored.sha256, "pointerSize": 134} if stored.lfs else None
        return {"rfilename": path, "size": stored.size, "blobId": stored.git_oid,
                **({"lfs": lfs} if lfs else {})}

    @staticmethod
    def _select(data: dict[str, Any], expand: list[str]) -> dict[str, Any]:
        unknown = sorted(set(expand) - set(get_args(ExpandModelProperty_T)))
        if unknown:
            raise _HttpError(400, f"Invalid expand values: {', '.join(unknown)}")
        return {key: value for key, value in data.items() if key in {"_id", "id", *expand}}

    # ------------------------------------------------------------- API routes

    def _whoami(self, request: _Request) -> _Reply:
        user = request.user
        if user is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return _json_reply({
            "type": "user", "id": hashlib.sha1(user.name.encode()).hexdigest()[:24], "name": user.name,
            "fullname": user.name, "isPro": False, "canPay": False, "emailVerified": True,
            "orgs": [{"type": "org", "name": org, "fullname": org} for org in user.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "stand-in", "role": user.role, **(
                {"fineGrained": {"canReadGatedRepos": True, "global": [], "scoped": [
                    {"entity": {"type": "user" if namespace == user.name else "org", "name": namespace},
                     "permissions": list(permissions)} for namespace, permissions in user.scoped.items()]}}
                if user.scoped is not None else {})}},
        })

    def _list_models(self, request: _Request) -> _Reply:
        search = (request.arg("search") or "").lower()
        author, filters = request.arg("author"), request.query.get("filter", [])
        with self._lock:
            repos = [repo for repo in self._repos.values()
                     if (not repo.private or self._is_member(request.user, repo.namespace))
                     and search in repo.repo_id.lower() and author in (None, repo.namespace)
                     and set(filters) <= set(self.tags(repo))]
        sort = request.arg("sort")
        if sort is not None:
            if sort not in SORT_KEYS:
                raise _HttpError(400, f"Invalid sort: {sort}")
            repos.sort(key=lambda repo: self._model_json(repo)[sort], reverse=True)
        start = int(request.arg("cursor") or 0)
        size = min(int(request.arg("limit") or self.page_size), self.page_size)
        page = [self._model_json(repo) for repo in repos[start:start + size]]
        if "expand" in request.query:
            page = [self._select(item, request.query["expand"]) for item in page]
        else:
            fields = (FULL_FIELDS if request.flag("full") else LIST_FIELDS) | (
                {"cardData"} if request.flag("cardData") else set())
            page = [{key: value for key, value in item.items() if key in fields} for item in page]
        reply = _json_reply(page)
        if start + size < len(repos):
            params = [(key, value) for key, values in request.query.items() if key != "cursor" for value in values]
            next_url = f"{self.endpoint}/api/models?{urlencode(params + [('cursor', str(start + size))])}"
            reply.headers["Link"] = f'<{next_url}>; rel="next"'
        return reply

    def _model_info(self, request: _Request, repo: str, rev: str = "main") -> _Reply:
        found = self._readable(repo, request.user)
        revision = self._revision(found, rev)
        data = self._model_json(found, blobs=request.flag("blobs"))
        if revision is not found.head:
            data["sha"] = revision.oid
            data["siblings"] = [self._sibling(p, s, request.flag("blobs")) for p, s in sorted(revision.files.items())]
        return _json_reply(self._select(data, request.query["expand"]) if "expand" in request.query else data)

    def _tree(self, request: _Request, repo: str, rev: str, sub: str = "") -> _Reply:
        revision = self._revision(self._readable(repo, request.user), rev)
        prefix, recursive = f"{sub.strip('/')}/" if sub else "", request.flag("recursive")
        entries: dict[str, dict[str, Any]] = {}
        for path, stored in sorted(revision.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder, "size": 0,
                                            "oid": hashlib.sha1(folder.encode()).hexdigest()})
            if recursive or len(parts) == 1:
                lfs = {"oid": stored.sha256, "size": stored.size, "pointerSize": 134} if stored.lfs else None
                entries[path] = {"type": "file", "path": path, "size": stored.size, "oid": stored.git_oid,
                                 **({"lfs": lfs} if lfs else {})}
        if sub and not entries:
            raise _HttpError(404, f"Entry not found: {sub}", "EntryNotFound")
        return _json_reply(list(entries.values()))

    def _resolve(self, request: _Request, repo: str, rev: str, file: str) -> _Reply:
        found = self._readable(repo, request.user)
        user = request.user
        if found.gated and not (self._is_member(user, found.namespace) or (user and user.name in found.granted)):
            if user is None:
                raise _HttpError(401, f"Access to model {repo} is restricted. You must have access to it and be "
                                      "authenticated to access it. Please log in.", "GatedRepo")
            raise _HttpError(403, f"Access to model {repo} is restricted and you are not in the authorized list. "
                                  f"Visit {self.endpoint}/{repo} to ask for access.", "GatedRepo")
        revision = self._revision(found, rev)
        stored = revision.files.get(file)
        if stored is None:
            raise _HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": revision.oid})
        headers = {"ETag": f'"{stored.sha256 if stored.lfs else stored.git_oid}"', "X-Repo-Commit": revision.oid,
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        byte_range = _parse_range(request.headers.get("Range"), stored.size) if self.honour_ranges else None
        if byte_range is None:
            return _Reply(200, headers, _FileBody(self._blob(stored), 0, stored.size))
        start, end = byte_range
        headers["Content-Range"] = f"bytes {start}-{end}/{stored.size}"
        return _Reply(206, headers, _FileBody(self._blob(stored), start, end - start + 1))

    def _create_repo(self, request: _Request) -> _Reply:
        payload = json.loads(request.body or b"{}")
        if payload.get("type", "model") != "model":
            raise _HttpError(400, "the Hub stand-in holds model repos only")
        if request.user is None:
            raise _HttpError(401, "You must be authenticated to create a repo")
        namespace = payload.get("organization") or request.user.name
        repo_id = f"{namespace}/{payload['name']}"
        self._check_write(request.user, namespace)
        private = payload.get("visibility") == "private" or payload.get("private") is True
        with self._lock:
            if repo_id in self._repos:
                raise _HttpError(409, "You already created this model repo", data={"url": f"{self.endpoint}/{repo_id}"})
            self.add_model(repo_id, files={".gitattributes": GITATTRIBUTES}, private=private)
        return _json_reply({"url": f"{self.endpoint}/{repo_id}", "name": repo_id,
                            "id": self._model_json(self._repos[repo_id])["_id"]})

    def _delete_repo(self, request: _Request) -> _Reply:
        payload = json.loads(request.body or b"{}")
        if request.user is None:
            raise _HttpError(401, "You must be authenticated to delete a repo")
        namespace = payload.get("organization") or request.user.name
        repo_id = f"{namespace}/{payload.get('name')}"
        self._writable(repo_id, request.user)
        with self._lock:
            del self._repos[repo_id]
        self.deleted.append(repo_id)
        return _json_reply({})

    def _validate_yaml(self, request: _Request) -> _Reply:
        content = json.loads(request.body).get("content", "")
        try:
            parse_front_matter(content)
        except yaml.YAMLError as error:
            message = f"Invalid YAML in README.md: {error}"
            return _json_reply({"errors": [{"message": message}], "warnings": []}, 400)
        return _json_reply({"errors": [], "warnings": []})

    def _preupload(self, request: _Request, repo: str, rev: str) -> _Reply:
        revision = self._revision(self._writable(repo, request.user), rev)
        files = [{"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": revision.files[item["path"]].git_oid if item["path"] in revision.files else None}
                 for item in json.loads(request.body)["files"]]
        return _json_reply({"files": files, "commitOid": revision.oid})

    def _commit(self, request: _Request, repo: str, rev: str) -> _Reply:
        found = self._writable(repo, request.user)
        if self.commit_failure is not None:
            raise _HttpError(self.commit_failure, "the Hub stand-in refuses this commit (a test failure)")
        if rev != "main" or request.flag("create_pr"):
            raise _HttpError(400, "the Hub stand-in commits to main only (no branches, no pull requests)")
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "a commit starts with a header line")
        with self._lock:
            files, added = dict(found.head.files), {}
            for line in lines[1:]:
                key, path = line["key"], line["value"]["path"]
                if key == "file":
                    added[path] = base64.b64decode(line["value"]["content"])
                    files[path] = self._store(path, added[path])
                elif key == "deletedFile" and path in files:
                    del files[path]
                elif key == "deletedFolder":
                    files = {name: f for name, f in files.items() if not name.startswith(path.rstrip("/") + "/")}
                elif key == "deletedFile":
                    raise _HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                else:
                    raise _HttpError(400, f"the Hub stand-in takes regular uploads only, not {key!r} lines")
            oid = self._new_oid(repo)
            found.history.append(Revision(oid, files))
            found.last_modified = datetime.now(UTC)
            header = lines[0]["value"]
            self.commits[repo].append(ReceivedCommit(oid, header.get("summary", ""), header.get("description", ""),
                                                     lines[1:], added))
        return _json_reply({"success": True, "commitOid": oid, "commitUrl": f"{self.endpoint}/{repo}/commit/{oid}",
                            "hookOutput": ""})


def _content(value: bytes | str | Path) -> bytes:
    if isinstance(value, Path):
        return value.read_bytes()
    return value.encode("utf-8") if isinstance(value, str) else value


@contextmanager
def isolated_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    """A started `HubStandIn` for one test, with huggingface_hub isolated from this machine.

    No token from `HF_TOKEN` or the saved login reaches the stand-in, offline mode (which
    huggingface_hub reads once, at import) is off, and downloads go to a cache of the test's own. Use it inside a fixture:

        @pytest.fixture
        def hub(tmp_path, monkeypatch):
            with isolated_hub(tmp_path, monkeypatch) as stand_in:
                yield stand_in
    """
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # downloads stay in the test
    with HubStandIn(root=tmp_path / "hub-standin") as hub:
        yield hub


def safetensors_bytes(
    num_tensors: int = 2, *, tensor_bytes: int = 64, metadata: Mapping[str, str] | None = None
) -> bytes:
    """A valid safetensors file of zero float32 LoRA tensors, `tensor_bytes` (a multiple of 4) each.

    Many tensors make a large header (about 130 bytes each); large tensors make a large file.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    for index in range(num_tensors):
        name = f"transformer.single_transformer_blocks.{index}.attn.to_q.lora_A.weight"
        offsets = [index * tensor_bytes, (index + 1) * tensor_bytes]
        header[name] = {"dtype": "F32", "shape": [tensor_bytes // 4], "data_offsets": offsets}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(encoded)) + encoded + bytes(num_tensors * tensor_bytes)
