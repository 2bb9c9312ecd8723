"""Fair use of the one GPU: how many calls one visitor may have running at once.

A public Space has one pipeline and many visitors; without a bound, one script could fill the
queue with its own calls. `VisitorGate` counts the calls each visitor (by `Visitor.id`) has
running and refuses one more past `Limits.max_requests_per_visitor`, at once and before any
GPU time. The local user of a local run is one person and is not counted.
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
        self._running: dict[str, int] = {}

    def running(self, visitor: Visitor) -> int:
        with self._lock:
            return self._running.get(visitor.id, 0)

    @contextmanager
    def turn(self, visitor: Visitor, limit: int) -> Iterator[None]:
        """Hold one of `visitor`'s `limit` turns for the duration of a call.

        Raises:
            LimitError: the visitor already has `limit` calls running.
        """
        if visitor.is_local:
            yield
            return
        with self._lock:
            count = self._running.get(visitor.id, 0)
            if count >= limit:
                raise LimitError(
                    f"Your session already has {count} request{'s' if count != 1 else ''} running, the most one visitor "
                    f"may have at once; wait for one to finish, then send this again."
                )
            self._running[visitor.id] = count + 1
        try:
            yield
        finally:
            with self._lock:
                self._running[visitor.id] -= 1
                if not self._running[visitor.id]:
                    del self._running[visitor.id]


def one_turn_per_call(method: F) -> F:
    """Run a `LoraSpace` method inside one of its `visitor=` keyword's turns (see `VisitorGate`)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        visitor = kwargs.get("visitor", LOCAL)
        with self.gate.turn(visitor, self.settings.limits.max_requests_per_visitor):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
