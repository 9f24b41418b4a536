"""Who writes next in the daemon: mail being accepted goes before processing.

Kept apart from the daemon's wiring: it knows nothing of SMTP or the pipeline,
only of the two kinds of writer that take turns.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from collections.abc import Callable, Iterator


class WriteGate:
    """Acceptance first: a store never waits for more than the batch in hand.

    The drain worker starts a batch only when no store has run for `quiet`
    seconds, or when the backlog is past half its bound. This is about the
    GIL as much as the database: processing is CPU-bound Python in this same
    process. With SQLite (one writer at a time, a busy handler that polls)
    the gate also takes turns for this process's writers, so they never wait
    on each other inside SQLite.
    """

    def __init__(self, exclusive: bool, quiet: float = 0.05) -> None:
        self.exclusive, self.quiet = exclusive, quiet
        self._cond = threading.Condition()
        self._writing = False
        self._stores = 0  # waiting or writing
        self._last_store = 0.0

    @contextmanager
    def store(self) -> Iterator[None]:
        with self._cond:
            self._stores += 1
            while self._writing:
                self._cond.wait()
            self._writing = self.exclusive
        try:
            yield
        finally:
            with self._cond:
                self._stores, self._last_store, self._writing = self._stores - 1, time.monotonic(), False
                self._cond.notify_all()

    @contextmanager
    def process(self, urgent: Callable[[], bool]) -> Iterator[None]:
        with self._cond:
            while self._writing or (not urgent() and (
                self._stores or time.monotonic() - self._last_store < self.quiet
            )):
                self._cond.wait(self.quiet)
            self._writing = self.exclusive
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
