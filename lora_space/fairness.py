"""Fair use of the one GPU: how many calls one visitor, and one client address, may have running at once.

A public Space has one pipeline and many visitors; without a bound, one script could fill the
queue with its own calls. `VisitorGate` counts the calls each visitor (by `Visitor.id`) has
running and refuses one more past `Limits.max_requests_per_visitor`, at once and before any
GPU time. A visitor identity costs nothing (each new `gradio_client.Client` is a new one), so
the gate also counts calls per client address (`Visitor.address`, see
`ui.visitors.client_address`) and refuses one more past `Limits.max_requests_per_address`,
whatever visitors they claim to be. The local user of a local run is one person and is not counted.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from .errors import LimitError
from .owners import LOCAL, Visitor

F = TypeVar("F", bound=Callable)


class VisitorGate:
    """Counts running calls per visitor; one per `LoraSpace`, never a module global."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}  # "visitor:<id>" and "address:<address>" -> calls running

    def running(self, visitor: Visitor) -> int:
        with self._lock:
            return self._running.get(f"visitor:{visitor.id}", 0)

    @contextmanager
    def turn(self, visitor: Visitor, limit: int, *, address_limit: int | None = None) -> Iterator[None]:
        """Hold one of `visitor`'s `limit` turns (and one of its address's `address_limit`) for a call.

        Raises:
            LimitError: the visitor already has `limit` calls running, or its address `address_limit`.
        """
        if visitor.is_local:
            yield
            return
        keys = [f"visitor:{visitor.id}"] + ([f"address:{visitor.address}"] if visitor.address and address_limit else [])
        with self._lock:
            count = self._running.get(keys[0], 0)
            if count >= limit:
                raise LimitError(
                    f"Your session already has {count} request{'s' if count != 1 else ''} running, the most one visitor "
                    f"may have at once; wait for one to finish, then send this again."
                )
            if len(keys) > 1 and self._running.get(keys[1], 0) >= address_limit:  # type: ignore[operator]
                raise LimitError(
                    f"Your address already has {address_limit} requests running (from all its sessions), the most one "
                    "address may have at once; wait for one to finish, then send this again."
                )
            for key in keys:
                self._running[key] = self._running.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for key in keys:
                    self._running[key] -= 1
                    if not self._running[key]:
                        del self._running[key]


def one_turn_per_call(method: F) -> F:
    """Run a `LoraSpace` method inside one of its `visitor=` keyword's turns (see `VisitorGate`)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        visitor = kwargs.get("visitor", LOCAL)
        limits = self.settings.limits
        with self.gate.turn(visitor, limits.max_requests_per_visitor, address_limit=limits.max_requests_per_address):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
