"""The outbox sender in a process of its own, supervised by the daemon.

Intake, processing and sending share one interpreter otherwise, and under a
burst that interpreter is the limit: sending a mail costs about as much as
processing one. In its own process the sender has a core to itself. The rows
it sends are the same leased outbox rows (never two senders on one row), so
nothing about exactly-once changes: the child is one more sender.

The child is started with `spawn` (the daemon has threads; forking it is
unsafe), builds only what sending needs, and dies with the daemon: the kernel
sends it SIGTERM when its parent goes, even on `kill -9`, and SIGTERM makes it
finish the rows in hand and exit. The daemon wakes it through a shared event
when a commit queued mail, and starts it again if it dies.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from typing import Any

from maild.config import Settings

log = logging.getLogger("maild.outbound")

PR_SET_PDEATHSIG = 1
RESTART_DELAY = 1.0  # seconds before a dead sender is started again


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent goes (Linux); if it went already, go now."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the parent-pid check in the wait loop below still ends it
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _child(settings: Settings, level: int, parent: int, wake: Any, stop: Any) -> None:
    """The sender process: send until `stop` or SIGTERM."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the whole group: the daemon says when to stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _die_with_parent(parent)
    from maild.app import build_sender

    sender = build_sender(settings, wake)

    def orphaned() -> None:  # where PDEATHSIG is not to be had
        while not stop.wait(2.0):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=orphaned, daemon=True).start()
    sender.run(stop)


class SenderProcess:
    """A daemon service: keeps one sender process running until the daemon stops."""

    name = "outbox"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self.wake = self._ctx.Event()  # set after a commit that queued mail
        self._child_stop = self._ctx.Event()
        self.process: multiprocessing.process.BaseProcess | None = None

    def _start(self) -> None:
        self._child_stop.clear()
        self.process = self._ctx.Process(
            target=_child, name="maild-sender",
            args=(self.settings, logging.getLogger().level, os.getpid(), self.wake, self._child_stop),
        )
        self.process.start()
        log.info("sender process started pid=%s", self.process.pid)

    def run(self, stop: threading.Event) -> None:
        self._start()
        try:
            while not stop.wait(0.5):
                assert self.process is not None
                if not self.process.is_alive():
                    log.error("sender process pid=%s exited with status %s; starting it again",
                              self.process.pid, self.process.exitcode)
                    if stop.wait(RESTART_DELAY):
                        break
                    self._start()
        finally:
            self._finish()

    def _finish(self) -> None:
        """Let the child settle the rows in hand, then make sure it is gone."""
        if self.process is None:
            return
        self._child_stop.set()
        self.process.join(self.settings.daemon.shutdown_grace)
        if self.process.is_alive():
            log.warning("sender process pid=%s still busy after %ss; ending it", self.process.pid,
                        self.settings.daemon.shutdown_grace)
            self.process.terminate()
            self.process.join(5)
