"""The outbox sender in a process of its own, supervised by the daemon.

Intake, processing and sending share one interpreter otherwise, and under a
burst that interpreter is the limit: sending a mail costs about as much as
processing one. In its own process the sender has a core to itself. The rows
it sends are the same leased outbox rows (never two senders on one row), so
nothing about exactly-once changes: the child is one more sender.

The child is started with `spawn` (the daemon has threads; forking it is
unsafe) and builds only what sending needs. The daemon talks to it through a
pipe, written without ever blocking: a byte "w" wakes it (a commit queued
mail), "s" or the pipe's end stops it. A second pipe carries one byte back
once the child is built, so the daemon can wait for it before it answers
mail. No lock or semaphore is shared through Python; on SQLite the two share
the writer turn's file locks (writegate.WriterTurn), which the kernel drops
when the child dies, so a child killed at any moment cannot wedge the daemon
(one that hangs holding its turn is waited for a bounded time). It dies with
the daemon: the kernel sends it SIGTERM when its parent goes, even on `kill
-9` (and it checks its parent besides), and SIGTERM makes it settle the rows
in hand and exit. SIGINT and SIGHUP, which reach a whole process group, are the daemon's
to act on. If the child dies, the daemon starts it again.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from multiprocessing.connection import Connection

from maild.config import Settings

log = logging.getLogger("maild.outbound")

PR_SET_PDEATHSIG = 1
RESTART_DELAY = 1.0  # seconds before a dead sender is started again
WARM_SLICE = 0.25  # seconds between looks while the daemon waits for a new sender to be ready


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent goes (Linux; elsewhere the parent check in _listen)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _listen(control: int, signalled: int, parent: int, wake: threading.Event, stop: threading.Event) -> None:
    """The child's ear: the daemon's bytes, SIGTERM (through the signal pipe), or an orphaned child."""
    while not stop.is_set():
        ready, _, _ = select.select([control, signalled], [], [], 2.0)
        if signalled in ready:
            break  # SIGTERM: the only signal with a handler here
        if control in ready:
            data = os.read(control, 4096)
            if not data or b"s" in data:
                break  # stopped, or the daemon's end closed
            wake.set()
        if os.getppid() != parent:
            break
    stop.set()
    wake.set()


def _child(settings: Settings, level: int, parent: int, control: Connection, ready: Connection) -> None:
    """The sender process: send until the daemon says stop, goes away, or SIGTERM."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # SIGTERM: a handler that does nothing, so the interpreter writes the signal to the
    # wakeup pipe (async-signal-safe) and the listening thread stops the sender.
    signalled, wakeup = os.pipe()
    os.set_blocking(wakeup, False)
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.set_wakeup_fd(wakeup)
    _die_with_parent()
    stop, wake = threading.Event(), threading.Event()
    threading.Thread(target=_listen, args=(control.fileno(), signalled, parent, wake, stop),
                     name="sender-control", daemon=True).start()
    from maild.app import build_sender

    sender = build_sender(settings, wake)
    try:
        ready.send_bytes(b"r")
    except OSError:
        pass  # the daemon stopped waiting (it is stopping, or started another sender)
    ready.close()
    sender.run(stop)


class SenderProcess:
    """A daemon service: keeps one sender process running until the daemon stops."""

    name = "outbox"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._control: Connection | None = None  # the daemon's end of the pipe
        self.process: multiprocessing.process.BaseProcess | None = None
        self._ready: Connection | None = None  # the child says it is built (once per start)
        self._started = threading.Event()

    def wake(self) -> None:
        """Tell the sender mail was queued; never blocks (a full pipe has a wake in it already)."""
        self._write(b"w")

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._control is None:
                return
            try:
                os.write(self._control.fileno(), data)
            except (BlockingIOError, BrokenPipeError):
                pass  # a wake is waiting already, or the child is gone (and will be started again)

    def warm(self, timeout: float) -> bool:
        """Wait, at most `timeout` s, until the first sender process is built and sending (or
        gone): the daemon does this before it listens. False if neither came in time, or the
        daemon stopped meanwhile (the wait looks again every WARM_SLICE s)."""
        deadline = time.monotonic() + timeout
        if not self._started.wait(timeout):
            return False
        while True:
            with self._lock:
                ready, process = self._ready, self.process
            left = deadline - time.monotonic()
            if ready is None or left <= 0:
                return False
            try:
                if ready.poll(min(WARM_SLICE, left)):
                    ready.recv_bytes()  # the child's byte; EOFError: it died first (run starts another)
                    break
            except (OSError, EOFError):  # or closed meanwhile: the daemon is stopping
                return False
        if process is not None:
            log.info("sender process pid=%s ready", process.pid)
        return True

    def _start(self) -> None:
        reader, writer = self._ctx.Pipe(duplex=False)
        os.set_blocking(writer.fileno(), False)
        ready_reader, ready_writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_child, name="maild-sender",
            args=(self.settings, logging.getLogger().level, os.getpid(), reader, ready_writer),
        )
        process.start()
        reader.close()  # the child has its copy: when it goes, a write fails rather than fills up
        ready_writer.close()
        with self._lock:
            old, self._control, self.process = self._control, writer, process
            old_ready, self._ready = self._ready, ready_reader
        for conn in (old, old_ready):
            if conn is not None:
                conn.close()
        self._started.set()
        log.info("sender process started pid=%s", process.pid)

    def run(self, stop: threading.Event) -> None:
        self._start()
        try:
            while not stop.wait(0.5):
                assert self.process is not None
                if self.process.is_alive():
                    continue
                code = self.process.exitcode
                if code == 0:
                    # It was told to stop (SIGTERM to the whole group, as systemd sends):
                    # the daemon is most likely stopping too; start it again only if not.
                    log.info("sender process pid=%s stopped", self.process.pid)
                    if stop.wait(self.settings.daemon.shutdown_grace + 5):
                        break
                else:
                    log.error("sender process pid=%s exited with status %s; starting it again",
                              self.process.pid, code)
                    if stop.wait(RESTART_DELAY):
                        break
                self._start()
        finally:
            self._finish()

    def _finish(self) -> None:
        """Let the child settle the rows in hand, then make sure it is gone."""
        if self.process is None:
            return
        self._write(b"s")
        with self._lock:
            control, self._control = self._control, None
            ready, self._ready = self._ready, None
        for conn in (control, ready):
            if conn is not None:
                conn.close()
        self.process.join(self.settings.daemon.shutdown_grace)
        if self.process.is_alive():
            log.warning("sender process pid=%s still busy after %ss; ending it", self.process.pid,
                        self.settings.daemon.shutdown_grace)
            self.process.terminate()
            self.process.join(5)
