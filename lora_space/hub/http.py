"""The Hub layer's plumbing: its errors in words, its offline check, its ranged reads.

`client.HubClient` makes every Hub call; it wraps each in `hub_errors`, so that a huggingface_hub
or network error becomes a `HubError` saying what to do, and reads parts of files with
`ranged_reader`. No message holds a token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx2
from huggingface_hub import hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from lora_space.core.errors import HubError

logger = logging.getLogger(__name__)

TIMEOUT_S = 30.0
"""Seconds to wait for the Hub to connect or to send data (huggingface_hub's session never times out)."""


def ranged_reader(
    repo_id: str, filename: str, *, endpoint: str, token: str | bool | None, revision: str | None = None
) -> Callable[[int, int], tuple[bytes, int]]:
    """`read(start, end)`: bytes `start..end` of a repo file and the file's size, one ranged GET each.

    Each read turns Hub errors into `HubError`s (`hub_errors`); nothing is sent until a read. The
    request carries `token` (`False`: none; `HubClient` decides which).
    """
    headers = {**build_hf_headers(token=token), "Accept-Encoding": "identity"}

    def read(start: int, end: int) -> tuple[bytes, int]:
        with hub_errors(endpoint, repo_id=repo_id, filename=filename, revision=revision):
            url = hf_hub_url(repo_id, filename, revision=revision, endpoint=base_url(endpoint))
            return ranged_get(url, headers, start, end, where=f"{repo_id}/{filename}")

    return read


def base_url(endpoint: str) -> str:
    return endpoint.rstrip("/")


def require_online(offline: bool, endpoint: str, action: str) -> None:
    if offline:
        raise HubError(
            f"Cannot reach the Hub at {base_url(endpoint)} to {action}: the app is offline (HF_HUB_OFFLINE is set); "
            "unset HF_HUB_OFFLINE to use the Hub."
        )


def ranged_get(url: str, headers: dict[str, str], start: int, end: int, *, where: str) -> tuple[bytes, int]:
    """Bytes `start..end` (inclusive, clipped to the file) and the file's size, from one ranged GET.

    Reading stops once the range is in hand, so a server that ignores `Range` and answers 200
    with the whole file sends no more than the connection buffers before it is closed.
    """
    ranged = {**headers, "Range": f"bytes={start}-{end}"}
    with get_session().stream("GET", url, headers=ranged, timeout=TIMEOUT_S) as response:
        if response.status_code == 416:  # the range starts past the end: an empty (or shorter) file
            return b"", int(response.headers.get("Content-Range", "*/0").rsplit("/", 1)[-1])
        hf_raise_for_status(response)
        content_range = response.headers.get("Content-Range")
        size = content_range.rsplit("/", 1)[-1] if content_range else response.headers.get("Content-Length")
        if size is None or not size.isdigit():
            raise HubError(f"The Hub did not give the size of {where}; try again later.")
        offset = start if response.status_code == 206 else 0
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if offset + len(body) > end:
                break
    return bytes(body[start - offset : end + 1 - offset]), int(size)


@contextmanager
def hub_errors(
    endpoint: str,
    *,
    repo_id: str | None = None,
    filename: str | None = None,
    revision: str | None = None,
) -> Iterator[None]:
    """Turn huggingface_hub and network errors into `HubError`s that say what to do."""
    try:
        yield
    except (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        httpx2.TransportError,
    ) as error:
        raise _translate(error, base_url(endpoint), repo_id=repo_id, filename=filename, revision=revision) from error


def _translate(
    error: Exception,
    endpoint: str,
    *,
    repo_id: str | None = None,
    filename: str | None = None,
    revision: str | None = None,
) -> HubError:
    """The `HubError` that tells the user what `error` means and what to do about it."""
    cause = error.__cause__
    if isinstance(error, LocalEntryNotFoundError) and isinstance(cause, (HfHubHTTPError, OfflineModeIsEnabled)):
        # hf_hub_download wraps most failed look-ups (HTTP 403, 5xx, offline) when nothing is cached.
        return _translate(cause, endpoint, repo_id=repo_id, filename=filename, revision=revision)
    subject = f"{repo_id}/{filename}" if repo_id and filename else repo_id or "your account"
    logger.info("Hub call for %s failed: %s", subject, type(error).__name__)
    if isinstance(error, HFValidationError):
        return HubError(f"{repo_id!r} is not a Hub repo id; write it as 'user/repo'.")
    if isinstance(error, GatedRepoError):
        return HubError(f"{repo_id} is gated: accept its licence on the Hub and log in.")
    if isinstance(error, RepositoryNotFoundError):
        return HubError(f"No repo {repo_id} on the Hub; check the id (a private repo needs a login that can see it).")
    if isinstance(error, RevisionNotFoundError):
        return HubError(f"No revision {revision!r} in {repo_id}; check the revision.")
    if isinstance(error, RemoteEntryNotFoundError):
        return HubError(f"No file {filename} in {repo_id}; check the file name.")
    if isinstance(error, OfflineModeIsEnabled):
        return HubError(
            f"Cannot reach the Hub at {endpoint}: offline mode is on (HF_HUB_OFFLINE); unset it to use the Hub."
        )
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code
        if status == 401:
            return HubError(f"The Hub at {endpoint} refused the token (401): log in again or set a valid HF_TOKEN.")
        if status == 403:
            return HubError(
                f"The Hub at {endpoint} refused access to {subject} (403): use a token with that permission."
            )
        if status == 429:
            return HubError(f"The Hub at {endpoint} is rate-limiting requests; wait a minute and try again.")
        return HubError(f"The Hub at {endpoint} answered HTTP {status} for {subject}; try again later.")
    return HubError(f"Cannot reach the Hub at {endpoint}; check the network connection and HF_ENDPOINT.")
