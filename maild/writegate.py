"""Who writes next: the daemon's writers (mail being accepted, mail being processed) take
turns, and on SQLite they let the outbox sender, in a process of its own, have its turn.

Kept apart from the daemon's wiring: it knows nothing of SMTP, the pipeline or
the outbox, only of writers that take turns.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager, nullcontext
from collections.abc import Callable, Iterator

log = logging.getLogger("maild.daemon")


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

    def __init__(self, exclusive: bool, patience: float = 0.05, turn: WriterTurn | None = None) -> None:
        self.exclusive, self.patience, self.turn = exclusive, patience, turn
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
            with self.turn.writing() if self.turn is not None else nullcontext():
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
            with self.turn.writing() if self.turn is not None else nullcontext():
                yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class WriterTurn:
    """SQLite's write lock shared fairly with a writer in another process (the outbox sender).

    SQLite has one writer at a time and a busy handler that polls: a process
    whose writers follow each other without a gap (mail accepted, then
    processed, then accepted) keeps the lock, and a writer in another process
    polls in vain for seconds. Two lock files beside the database fix that.
    The other writer asks for its turn with an exclusive lock on `-turn`, so
    this process starts no new transaction, then waits with an exclusive lock
    on `-writing` for the transaction in hand here (held shared for its
    length) to end: the kernel wakes it the moment it does, with no polling
    and no gap. This process's writers (`writing`) wait while another asks,
    then hold `-writing` shared. Only one of them writes at a time (the write
    gate), so one descriptor each does. The kernel drops a dead process's
    locks, so a writer killed at any moment never blocks the others; one that
    hangs holding its turn (stopped, say) is waited for `wait` seconds, then
    this process writes without the turn (SQLite's own busy timeout applies
    again) and says so.
    """

    def __init__(self, database: str, wait: float = 10.0) -> None:
        self.database, self.wait = database, wait
        self._turn = os.open(database + "-turn", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        try:
            self._writing = os.open(database + "-writing", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        except OSError:
            os.close(self._turn)
            raise

    @classmethod
    def beside(cls, database: str | None) -> WriterTurn | None:
        """The turn of a SQLite database file; None for another backend, or when the files cannot be made."""
        if not database:
            return None
        try:
            return cls(database)
        except OSError as exc:  # a read-only folder: writers poll as SQLite has them
            log.warning("no writer turn beside %s: %s", database, exc)
            return None

    @contextmanager
    def asking(self) -> Iterator[None]:
        """The other process's transaction: this process's writers wait until it ends."""
        fcntl.flock(self._turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._writing, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._writing, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """One of this process's transactions: after the other's, if it asked."""
        deadline = time.monotonic() + self.wait
        if _shared(self._turn, deadline):
            fcntl.flock(self._turn, fcntl.LOCK_UN)
        held = _shared(self._writing, deadline)
        if not held:
            log.warning("the outbox sender has held its turn at %s for over %g s: writing without it",
                        self.database, self.wait)
        try:
            yield
        finally:
            if held:
                fcntl.flock(self._writing, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._turn)
        os.close(self._writing)


def _shared(fd: int, deadline: float) -> bool:
    """A shared lock on fd, waited for until deadline: False if the holder kept it that long.

    flock cannot time out, so a wait polls; the other writer's transactions
    are a few milliseconds, and the pause is never more than one.
    """
    pause = 0.0002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.001)
