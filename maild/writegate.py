"""Who writes next in the daemon: mail being accepted, and mail being processed, take turns.

Kept apart from the daemon's wiring: it knows nothing of SMTP or the pipeline,
only of the two kinds of writer that take turns.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from collections.abc import Callable, Iterator


class WriteGate:
    """Acceptance first, processing never starved.

    A store never waits for more than the batch in hand. The drain worker
    lets stores go first, but waits for them at most `patience` seconds (none
    when the backlog is past half its bound): a steady stream of mail keeps
    stores coming all the time, and processing that waited for a quiet moment
    would leave every mail pending until the stream stopped. With SQLite (one
    writer at a time, a busy handler that polls) the gate also takes turns
    for this process's writers, so they never wait on each other inside
    SQLite; the stores that queue up during a processing batch are then
    committed together, in one transaction, right after it.
    """

    def __init__(self, exclusive: bool, patience: float = 0.05) -> None:
        self.exclusive, self.patience = exclusive, patience
        self._cond = threading.Condition()
        self._writing = False
        self._stores = 0  # waiting or writing

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
                self._stores, self._writing = self._stores - 1, False
                self._cond.notify_all()

    @contextmanager
    def process(self, urgent: Callable[[], bool]) -> Iterator[None]:
        with self._cond:
            until = time.monotonic() + self.patience
            while self._writing or (self._stores and not urgent() and (left := until - time.monotonic()) > 0):
                self._cond.wait(None if self._writing else left)
            self._writing = self.exclusive
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
