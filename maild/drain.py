"""The daemon's door to the durable intake, and the worker that drains it.

`Intake` is what the edges (SMTP/LMTP handlers, IMAP pollers) store through:
one writer thread group-commits every store waiting at that moment and wakes
the drain worker; it keeps the backlog count that turns new mail away with a
451 when full. `DrainWorker` processes pending mail in batches that grow with
the backlog, parsing each batch in the worker processes before it takes its
turn at the write gate. The daemon (daemon.py) wires both; nothing here knows
SMTP, signals or the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from collections.abc import Callable, Sequence

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker, Session

from maild import db
from maild.db import first_line, is_transient
from maild.ingest.intake import Accepted, Incoming, accept, accept_many
from maild.ingest.pipeline import Ahead, Pipeline
from maild.models import RawMessage
from maild.writegate import WriteGate

log = logging.getLogger("maild.daemon")


class ShuttingDown(Exception):
    """The daemon is stopping: no new store is started."""


class Intake:
    """The daemon's door to the durable intake, for the edges (and pollers, from any thread).

    One writer thread commits every store waiting at that moment in one
    transaction (group commit), on an engine with short timeouts: a locked or
    unreachable database means a prompt 451, not a stalled sender. Each new
    message wakes the drain worker. The backlog is counted in memory (+n per
    n new, -n per n processed) and recounted every drain_interval.
    """

    def __init__(self, sessions: sessionmaker[Session], max_backlog: int, gate: WriteGate | None = None,
                 threads: int = 16) -> None:
        self.sessions, self.max_backlog = sessions, max_backlog
        self.gate = gate or WriteGate(exclusive=False)
        self.wake = threading.Event()
        self.pending = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="intake-writer", daemon=True)
        self._writer.start()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="intake")
        self._in_flight: set[asyncio.Future] = set()
        self.closing = False

    def full(self) -> bool:  # new mail gets 451
        return self.pending >= self.max_backlog

    def urgent(self) -> bool:  # processing no longer waits for a quiet moment
        return self.pending * 2 >= self.max_backlog

    def store(self, item: Incoming) -> Accepted:
        """Store one message; durable once this returns. Blocks; not on the event loop."""
        done: Future = Future()
        self._queue.put((item, done))
        return done.result()

    def _write_loop(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            while len(batch) < 100:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is None:
                batch.pop()
                self._queue.put(None)
            self._write(batch)

    def _write(self, batch: list[tuple[Incoming, Future]]) -> None:
        try:
            with self.gate.store():
                if len(batch) == 1:  # accept() also copes with a copy stored meanwhile elsewhere
                    results = [accept(self.sessions, batch[0][0])]
                else:
                    results = accept_many(self.sessions, [item for item, _ in batch])
        except Exception as exc:
            if is_transient(exc) or len(batch) == 1:
                for _, done in batch:
                    done.set_exception(exc)
                return
            for one in batch:  # one bad message must not refuse the others
                self._write([one])
            return
        fresh = sum(not a.duplicate for a in results)
        if fresh:
            with self._lock:
                self.pending += fresh
            self.wake.set()
        for (_, done), accepted in zip(batch, results):
            done.set_result(accepted)

    def arrived(self, accepted: Sequence[Accepted]) -> None:
        """Mail stored by another path in this process (IMAP): the drain worker takes it."""
        fresh = sum(not a.duplicate for a in accepted)
        with self._lock:
            self.pending += fresh
        self.wake.set()

    def processed(self, n: int) -> None:
        with self._lock:
            self.pending = max(0, self.pending - n)

    def recount(self) -> None:
        """The backlog from the database: corrects drift, e.g. mail processed by another command.

        A batch stored or processed while this runs may be counted twice
        until the next recount; the bound is approximate by that much.
        """
        query = select(func.count()).select_from(RawMessage).where(RawMessage.state == "pending")
        try:
            with self.sessions() as session, self._lock:
                self.pending = session.scalar(query) or 0
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("backlog recount skipped: database unavailable: %s", first_line(exc))

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn in the intake's threads, off the event loop."""
        if self.closing:
            raise ShuttingDown("shutting down")
        fut = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        self._in_flight.add(fut)
        fut.add_done_callback(self._in_flight.discard)
        return await fut

    async def settle(self, timeout: float) -> None:
        """Start no more stores; wait up to `timeout` s for those in progress."""
        self.closing = True
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._queue.put(None)
        self._writer.join()


class DrainWorker:
    """Processes pending messages in batches, one short transaction each.

    Leftovers from a previous run are processed at start; stores go first (see
    WriteGate); a database that is locked or down pauses it, mail stays pending.
    Parsing never holds the gate: each batch is parsed (in worker processes,
    under the per-message budget) before the gate is taken, and the next batch
    is parsed while this one is stored. A batch is `batch` messages when little
    waits, growing with the backlog up to `max_batch` so a burst is worked off
    in fewer, larger transactions.
    """

    name = "drain"

    def __init__(self, pipeline: Pipeline, intake: Intake, batch: int, interval: float,
                 max_batch: int | None = None) -> None:
        self.pipeline, self.intake, self.batch, self.interval = pipeline, intake, batch, interval
        self.max_batch = max(batch, max_batch or batch)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.intake.wake.clear()
            try:
                self.drain(stop)
            except Exception as exc:
                if stop.is_set():
                    return  # stopping: parsing was abandoned, the mail stays pending
                if is_transient(exc):
                    log.warning("drain paused: database unavailable: %s", first_line(exc))
                else:
                    log.exception("drain failed; retrying")
                stop.wait(1.0)
                continue
            self.intake.wake.wait(self.interval)

    def warm(self, timeout: float) -> bool:
        """Before the daemon listens: the parse workers up (see Daemon.serve)."""
        return self.pipeline.warm(timeout)

    def size(self) -> int:
        """The next batch's size: the idle size, or the backlog up to max_batch."""
        return min(self.max_batch, max(self.batch, self.intake.pending))

    def _start(self, after: int) -> tuple[list[int], Ahead] | None:
        ids = self.pipeline.pending_ids(self.size(), after)
        return (ids, self.pipeline.prepare_pending(ids)) if ids else None

    def drain(self, stop: threading.Event) -> None:
        """Until nothing is pending (or nothing more can be done now)."""
        current = self._start(0)
        while current is not None and not stop.is_set():
            ids, ahead = current
            ahead.wait()  # parsed, or over budget: outside the gate
            upcoming = self._start(ids[-1])
            with self.intake.gate.process(self.intake.urgent):
                outcomes = self.pipeline.process(ids, ahead)
            self.intake.processed(len(outcomes))
            if upcoming is None and outcomes:
                upcoming = self._start(0)  # mail retried or stored meanwhile below the last id
            current = upcoming


def intake_engine(url: str, timeout: float) -> Engine:
    """An engine whose statements give up after about `timeout` s on a locked or unreachable database."""
    ms = int(timeout * 1000)
    if db.normalise_url(url).startswith("sqlite"):
        engine = db.make_engine(url)

        @event.listens_for(engine, "connect")
        def _sqlite(dbapi_conn, _record):
            dbapi_conn.execute(f"PRAGMA busy_timeout={ms}")

        return engine
    connect_args = {"connect_timeout": max(2, math.ceil(timeout))}
    engine = create_engine(db.normalise_url(url), pool_pre_ping=True, pool_size=2, connect_args=connect_args)

    @event.listens_for(engine, "connect")
    def _postgresql(dbapi_conn, _record):
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET lock_timeout = {ms}")
            cur.execute(f"SET statement_timeout = {ms}")
        dbapi_conn.commit()

    return engine
