"""parse and classify under a per-message budget, in worker processes that can be stopped.

A hostile message (a Subject of a hundred thousand encoded words, a MIME bomb)
can cost the parser minutes of CPU or gigabytes of memory. Each message is
therefore its own task in a pebble process pool: past `ingest.parse_timeout`
seconds its worker is killed and replaced; past `ingest.parse_memory` bytes
(RLIMIT_AS, set in the worker before each message) the parser gets a
MemoryError. Either way the message gets a precise error for the quarantine
and the other messages go on. pebble does the stopping and replacing, which
concurrent.futures cannot do for one task. This module never touches the
database.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, CancelledError, Future, wait
from dataclasses import dataclass, replace

from pebble import ProcessExpired, ProcessPool

from maild.ingest.stages.classify import OwnMail, classify
from maild.ingest.stages.parse import parse
from maild.ingest.stages.records import Classification, ParsedMessage

RECYCLE_AFTER = 2000  # messages per worker process: a fresh one bounds what fragmentation costs
WARM_SLICE = 0.25  # seconds between looks while the daemon waits for the workers at start
NICENESS = 5  # how much lower the workers' priority is than the storing process's


@dataclass(frozen=True)
class Prepared:
    """What the pure stages made of a message, or where and why they failed."""

    msg: ParsedMessage | None
    cls: Classification | None
    stage: str | None = None
    error: str | None = None


def describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def prepare(data: bytes, envelope_to: tuple[str, ...], own: OwnMail, envelope_from: str | None = None) -> Prepared:
    """parse, then classify. Pure; a failure is caught here only to carry it back
    across the process boundary. Running out of memory is the budget's to report."""
    stage = "parse"
    try:
        msg = parse(data, envelope_to, envelope_from, own.addresses | own.names)
        if msg.message is None:
            return Prepared(None, None, stage, "the parser gave no MIME tree")
        stage = "classify"
        cls = classify(msg.message, msg.from_.email if msg.from_ else None, own)
    except MemoryError:
        raise
    except Exception as exc:
        return Prepared(None, None, stage, describe(exc))
    # The MIME tree stays behind: later stages need only the parsed record.
    return Prepared(replace(msg, message=None), cls)


_statm: tuple[int, int] | None = None  # (pid, descriptor of its /proc/self/statm), opened once per process


def _held() -> int | None:
    """Bytes of address space this process holds; None without /proc."""
    global _statm
    try:
        if _statm is None or _statm[0] != os.getpid():  # a forked worker reads its own file, not its parent's
            _statm = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
        return int(os.pread(_statm[1], 128, 0).split()[0]) * resource.getpagesize()
    except OSError:
        return None


def _limit_memory(extra: int) -> None:
    """Allow this process `extra` bytes of address space beyond what it holds now."""
    held = _held()
    if held is None:  # no /proc: no limit rather than a wrong one
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = held + extra
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))


def _prepare_limited(
    data: bytes, envelope_to: tuple[str, ...], own: OwnMail, memory: int, envelope_from: str | None = None
) -> Prepared:
    """One message in a worker: the memory budget, then parse and classify."""
    _limit_memory(memory)
    try:
        return prepare(data, envelope_to, own, envelope_from)
    except MemoryError:
        return Prepared(None, None, "parse", f"too-large: over {memory} bytes of memory")


def _run_chunk(
    task: Callable[..., Prepared], items: list[tuple[bytes, tuple[str, ...], str | None]], own: OwnMail, memory: int
) -> list[Prepared]:
    """Several messages in one worker task (one round trip instead of one each), each
    run by `task` as if alone. A chunk that overruns the time budget is given up and its
    messages are run again one by one, each under its own budget."""
    return [task(data, envelope_to, own, memory, envelope_from) for data, envelope_to, envelope_from in items]


def _yield_to_store() -> None:
    """In each worker: a lower priority than the process that stores. Storing is the one
    serial step (message by message, in order); the workers only have to keep ahead of it."""
    os.nice(NICENESS)


def _ready() -> int:
    """A worker's first task at a start (Budget.warm): it exists, with the parser imported."""
    return os.getpid()


def _context() -> multiprocessing.context.BaseContext:
    """fork in a single-threaded command (cheap, nothing to import again); forkserver in
    the daemon, where forking a process with other threads running is unsafe."""
    if threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


class Budget:
    """Submits messages to the worker pool and turns an overrun into a Prepared error."""

    def __init__(self, own: OwnMail, seconds: float, memory: int, workers: int = 1,
                 task: Callable[..., Prepared] | None = None) -> None:
        """task: what a worker runs per message (a module-level function, for the workers to import)."""
        self.own, self.seconds, self.memory = own, seconds, memory
        self.task = task or _prepare_limited
        self.workers = max(1, workers)
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the workers now: before other threads start, they can be forked (cheap)."""
        self._started()

    def warm(self, timeout: float) -> bool:
        """Start the workers and wait, at most `timeout` s, until they answer: the daemon
        does this before it listens, so the first mail after a start does not wait for
        processes to start and import the parser. False if they did not answer in time,
        or the pool was closed meanwhile (the wait looks again every WARM_SLICE s)."""
        deadline = time.monotonic() + timeout
        pool = self._started()
        answers = [pool.schedule(_ready) for _ in range(self.workers)]
        while (left := deadline - time.monotonic()) > 0:
            done, late = wait(answers, min(WARM_SLICE, left))
            if not late:
                return all(f.exception() is None for f in done)
            with self._lock:
                if self._pool is not pool:  # closed: the daemon is stopping
                    return False
        return False

    def _started(self) -> ProcessPool:
        with self._lock:
            if self._pool is None or not self._pool.active:
                self._pool = ProcessPool(self.workers, max_tasks=RECYCLE_AFTER, context=_context(),
                                         initializer=_yield_to_store)
            return self._pool

    def submit(self, data: bytes, envelope_to: tuple[str, ...], envelope_from: str | None = None) -> Future:
        return self._started().schedule(
            self.task, args=(data, envelope_to, self.own, self.memory, envelope_from), timeout=self.seconds
        )

    def submit_chunk(self, items: list[tuple[bytes, tuple[str, ...], str | None]]) -> Future:
        """A Future of the Prepared list for `items`, or of an error (then run them one by one)."""
        return self._started().schedule(_run_chunk, args=(self.task, items, self.own, self.memory),
                                        timeout=self.seconds)

    def result(self, future: Future) -> Prepared:
        """The worker's result, or why the message went over its budget."""
        try:
            return future.result()
        except TimeoutError:
            return Prepared(None, None, "parse", f"too-slow: over {self.seconds:g} s")
        except ProcessExpired as exc:  # killed from outside (the kernel's OOM killer) or crashed
            return Prepared(None, None, "parse", f"too-large: the parser's process died (exit code {exc.exitcode})")
        except MemoryError:  # the result itself did not fit, on its way back
            return Prepared(None, None, "parse", f"too-large: over {self.memory} bytes of memory")
        except (CancelledError, BrokenExecutor):
            raise  # the pool was stopped (shutdown): not the message's fault, it stays pending
        except Exception as exc:  # e.g. a result that cannot be sent back
            return Prepared(None, None, "parse", describe(exc))

    def prepare(self, data: bytes, envelope_to: tuple[str, ...], envelope_from: str | None = None) -> Prepared:
        return self.result(self.submit(data, envelope_to, envelope_from))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.stop()  # a message still parsing is abandoned: it stays pending
                self._pool.join()
                self._pool = None
