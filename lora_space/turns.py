"""`Turns`: who uses the one pipeline next, first come, first served (generations and training chunks)."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from collections.abc import Iterator


class Turns:
    """Who uses the pipeline next: first come, first served, with the generations waiting counted.

    A ticket lock: each caller takes the next number and runs when it is served. A training job
    that gives its turn back and asks again at once therefore queues behind the generations
    already waiting, where a plain lock would let it take the pipeline again before they wake.
    The count of waiting generations lives in shared memory, so a training chunk running in a
    forked GPU worker (ZeroGPU) reads it too (`waiting_generations`).
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._next = 0  # the next ticket handed out
        self._serving = 0  # the ticket whose turn it is
        self._abandoned: set[int] = set()  # tickets whose holder stopped waiting
        self._generations = multiprocessing.RawValue("i", 0)  # generations waiting (shared with forked workers)

    @contextlib.contextmanager
    def turn(self, *, generation: bool = False) -> Iterator[None]:
        """Wait for this caller's turn and hold it for the block (not reentrant)."""
        with self._changed:
            ticket, self._next = self._next, self._next + 1
            self._generations.value += generation
            try:
                while self._serving != ticket:
                    self._changed.wait()
            except BaseException:  # interrupted while waiting: the ticket is skipped when its turn comes
                self._abandoned.add(ticket)
                raise
            finally:
                self._generations.value -= generation
        try:
            yield
        finally:
            with self._changed:
                self._serving += 1
                while self._serving in self._abandoned:
                    self._abandoned.discard(self._serving)
                    self._serving += 1
                self._changed.notify_all()

    def waiting_generations(self) -> int:
        """Generations waiting for a turn now (read without a lock: a forked worker may ask)."""
        return self._generations.value
