"""The outbox sender: delivers queued mail through the relay, each row once.

A claim is a lease: a row is marked `sending` with this sender's owner id and
an expiry (`sending_timeout` from now), committed before the relay sees it,
and renewed while the sender works; no other sender touches it while the lease
is valid. A row whose lease expired while `sending` (its sender died mid-send)
was perhaps delivered, perhaps not: it is sent again with the same bytes and
Message-ID, at most once in its life (`resends`); after a second such
ambiguity it stops as `unknown` and the issue's reps are told.

Rows are claimed a few at a time with their bytes, sent over several relay
conversations in parallel (`outbound.connections`, each reused across
messages), and settled in batched commits. Per-recipient answers are kept on
the row: 4xx recipients are tried again with backoff, 5xx refusals are told
to the issue's reps, and a row fails for good on a 5xx or its deadline.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Integer, bindparam, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.db import is_transient
from maild.models import OutboxMessage, table_of, utcnow
from maild.outbound.relays import (
    ConnectionLost, LostInData, Permanent, RelayConfig, Results, Temporary, open_relay,
)
from maild.timefmt import aware

log = logging.getLogger("maild.outbound")

OUTBOX = table_of(OutboxMessage)
GATHER = 0.02  # seconds to gather more results into one commit once one is in


def _statements() -> dict:
    """The sender's statements, built once (building one costs more than running it on SQLite)."""
    t = OUTBOX.c
    columns = (t.id, t.status, t.resends, t.envelope_from, t.recipients, t.results, t.data)
    limit = bindparam("limit", type_=Integer)
    ids = bindparam("ids", type_=Integer, expanding=True)
    lease = {"status": "sending", "lease_owner": bindparam("owner"), "lease_until": bindparam("until"),
             "sending_since": bindparam("now"), "attempts": t.attempts + 1}
    return {
        # Two indexed reads (ix_outbox_due), never one OR over the whole table: a
        # campaign's hundred thousand queued rows must not make each claim a scan.
        "stale": select(*columns).where(t.status == "sending",
                                        or_(t.lease_until.is_(None), t.lease_until < bindparam("now")))
        .order_by(t.id).limit(limit).with_for_update(skip_locked=True),
        "due": select(*columns).where(t.status == "queued", t.next_attempt_at <= bindparam("now"))
        .order_by(t.next_attempt_at, t.id).limit(limit).with_for_update(skip_locked=True),
        "lease": update(OUTBOX).where(t.id.in_(ids)).values(**lease),
        "lease_again": update(OUTBOX).where(t.id.in_(ids)).values(**lease, resends=t.resends + 1),
        "renew": update(OUTBOX).where(t.id.in_(ids), t.lease_owner == bindparam("owner"), t.status == "sending")
        .values(lease_until=bindparam("until")),
        "sent": update(OUTBOX).where(t.id == bindparam("rid"), t.lease_owner == bindparam("owner"),
                                     t.status == "sending")
        .values(status="sent", sent_at=bindparam("now"), last_error=None, lease_owner=None, lease_until=None,
                results=bindparam("res")),
    }


SQL = _statements()
STALE_CHECK = 5.0  # seconds between looks for rows whose lease ran out (a sender died mid-send)
UNKNOWN_ERROR = ("delivery uncertain twice: a sender stopped while sending it; it may or may not have arrived, "
                 "and it is not sent again")


class Flag(Protocol):
    """A threading.Event, or a multiprocessing one shared with the daemon (maild/sendproc.py)."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class DeliveryHooks(Protocol):
    """What the desk does when mail does not get through (desk/notify.py)."""

    def delivery_failed(self, session: Session, row: OutboxMessage) -> None: ...

    def recipients_refused(self, session: Session, row: OutboxMessage, refused: dict[str, tuple[int, str]]) -> None: ...

    def delivery_unknown(self, session: Session, row: OutboxMessage) -> None: ...


@dataclass(frozen=True)
class Claimed:
    """A row in this sender's hands: what to send, to whom (those not yet answered for good)."""

    id: int
    envelope_from: str
    recipients: list[str]
    data: bytes
    previous: dict | None  # per-recipient answers of earlier attempts


Done = tuple[Claimed, Results | None, Exception | None]


def final(code: int) -> bool:
    """A recipient answered for good: delivered (2xx) or refused (5xx)."""
    return 200 <= code < 300 or code >= 500


def refused_words(refused: dict[str, tuple[int, str]], verb: str = "refused") -> str:
    """"the relay refused pat@example.org: 550 5.1.1 no such user; ..." """
    return "; ".join(f"the relay {verb} {addr}: {code} {text}".rstrip() for addr, (code, text) in refused.items())


class _Clock:
    """The time of a run: `now` as given (tests move it) plus the time the run has taken."""

    def __init__(self, now: datetime | None) -> None:
        self.start, self.t0 = now or utcnow(), time.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=time.monotonic() - self.t0)


class Sender:
    name = "outbox"  # as a daemon service

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], hooks: DeliveryHooks | None = None,
                 owner: str | None = None) -> None:
        self.relay = RelayConfig.from_settings(settings)
        self.sessions = sessions
        self.hooks = hooks
        o = settings.outbound
        self.retry_base, self.retry_max = o.retry_base, o.retry_max
        self.lease = timedelta(seconds=o.sending_timeout)
        self.interval = o.send_interval
        self.connections = o.connections
        # Rows in hand at most: two per connection, one being sent and the next
        # ready, so a connection never idles while results are settled and
        # more rows claimed (each such commit takes a turn at the write lock:
        # under a burst, half as many). A row claimed counts as possibly sent
        # if this sender dies, so no more wait in hand (other senders get their share).
        self.batch = 2 * o.connections
        self.owner = owner or f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.wake: Flag = threading.Event()  # set when mail was queued: send now rather than at the next interval
        # Held around each of this sender's transactions: how it gets its turn at SQLite's write lock
        # when it runs beside the daemon's writers (writegate.WriterTurn); nothing otherwise.
        self.turn: Callable[[], AbstractContextManager[object]] = nullcontext
        self._next_stale_check = 0.0

    # -- the daemon's service ---------------------------------------------------------------

    def run(self, stop: Flag) -> None:
        """Send what is due, then wait for queued mail or `send_interval`, until `stop`."""
        while not stop.is_set():
            self.wake.clear()
            try:
                self.run_once(stop=stop)
            except Exception as exc:
                if is_transient(exc):
                    log.warning("outbox paused: database unavailable: %s", str(exc).splitlines()[0][:200])
                else:
                    log.exception("outbox run failed; retrying")
                stop.wait(1.0)
            until = time.monotonic() + self.interval
            while not stop.is_set() and not self.wake.is_set() and time.monotonic() < until:
                self.wake.wait(min(0.5, max(0.0, until - time.monotonic())))

    # -- one run -----------------------------------------------------------------------------

    def run_once(self, now: datetime | None = None, stop: Flag | None = None) -> Counter:
        """Deliver what is due; returns how many rows ended in each status."""
        clock = _Clock(now)
        self._next_stale_check = 0.0  # each run looks for expired leases first
        counts: Counter = Counter()
        work: queue.SimpleQueue[Claimed | None] = queue.SimpleQueue()
        done: queue.SimpleQueue[Done] = queue.SimpleQueue()
        in_hand: set[int] = set()
        threads: list[threading.Thread] = []
        renew_every = self.lease.total_seconds() / 3
        last_renew, draining = time.monotonic(), False
        try:
            while True:
                finished = self._collect(done, len(in_hand), renew_every)
                in_hand -= {c.id for c, _, _ in finished}
                if any(isinstance(err, ConnectionLost) for _, _, err in finished):
                    draining = True  # the relay is away: settle what is in hand, claim nothing more
                if stop is not None and stop.is_set():
                    draining = True
                want = self.batch - len(in_hand) if not draining else 0
                renew = time.monotonic() - last_renew >= renew_every and bool(in_hand)
                if finished or want or renew:
                    with self.turn(), self.sessions() as session, session.begin():
                        counts.update(self._settle(session, clock(), finished))
                        if renew:
                            self._renew(session, clock(), in_hand)
                        claimed, gave_up = self._claim(session, clock(), want) if want else ([], 0)
                    if renew:
                        last_renew = time.monotonic()
                    counts["unknown"] += gave_up
                    if want and len(claimed) + gave_up < want:
                        draining = True  # nothing more due now; mail queued meanwhile wakes the next run
                    for c in claimed:
                        in_hand.add(c.id)
                        work.put(c)
                    while len(threads) < min(self.connections, len(in_hand)):
                        t = threading.Thread(target=self._work, args=(work, done), name="outbox-send", daemon=True)
                        t.start()
                        threads.append(t)
                if not in_hand and draining:
                    break
        finally:
            for _ in threads:
                work.put(None)
            for t in threads:
                t.join()
        return +counts

    def _collect(self, done: queue.SimpleQueue[Done], in_hand: int, timeout: float) -> list[Done]:
        """Results ready now; when rows are in hand, wait for one, then gather more for a moment (one commit)."""
        out: list[Done] = []
        if in_hand:
            try:
                out.append(done.get(timeout=timeout))
            except queue.Empty:
                return out
        until = time.monotonic() + GATHER
        while len(out) < in_hand:
            try:
                wait = until - time.monotonic()
                out.append(done.get(timeout=wait) if wait > 0 and len(out) < self.batch // 2 else done.get_nowait())
            except queue.Empty:
                break
        return out

    def _work(self, work: queue.SimpleQueue[Claimed | None], done: queue.SimpleQueue[Done]) -> None:
        """One relay conversation: sends the rows handed to it, reusing the connection."""
        relay = None
        try:
            while (c := work.get()) is not None:
                try:
                    if not c.recipients:  # every recipient answered for good already: nothing to send
                        done.put((c, {}, None))
                        continue
                    if relay is None:
                        relay = open_relay(self.relay)
                    done.put((c, relay.send(c.envelope_from, c.recipients, c.data), None))
                except (Temporary, Permanent) as exc:
                    done.put((c, None, exc))
                except Exception as exc:  # never drop a row in hand: it is settled as a temporary failure
                    log.exception("outbox id=%s: sending failed unexpectedly", c.id)
                    done.put((c, None, Temporary(f"{type(exc).__name__}: {exc}")))
        finally:
            if relay is not None:
                relay.close()

    # -- the database side: claim, renew, settle ------------------------------------------------

    def _claim(self, session: Session, now: datetime, limit: int) -> tuple[list[Claimed], int]:
        """Lease up to `limit` due rows with their bytes; a row ambiguous a second time becomes `unknown`."""
        rows: list = []
        if time.monotonic() >= self._next_stale_check:  # leases run out rarely: looked for now and then
            self._next_stale_check = time.monotonic() + STALE_CHECK
            rows = list(session.execute(SQL["stale"], {"now": now, "limit": limit}).all())
        if len(rows) < limit:
            rows += session.execute(SQL["due"], {"now": now, "limit": limit - len(rows)}).all()
        fresh = [r.id for r in rows if r.status == "queued"]
        again = [r.id for r in rows if r.status == "sending" and r.resends < 1]
        gone = [r.id for r in rows if r.status == "sending" and r.resends >= 1]
        lease = {"owner": self.owner, "until": now + self.lease, "now": now}
        if fresh:
            session.execute(SQL["lease"], {**lease, "ids": fresh})
        if again:
            session.execute(SQL["lease_again"], {**lease, "ids": again})
            log.warning("outbox ids=%s: lease expired mid-send; sending again, once", ",".join(map(str, again)))
        for row_id in gone:
            self._unknown(session, row_id)
        claimed = []
        for r in rows:
            if r.id in gone:
                continue
            answered = r.results or {}
            todo = [a for a in r.recipients if a not in answered or not final(answered[a]["code"])]
            claimed.append(Claimed(r.id, r.envelope_from, todo, r.data, r.results))
        return claimed, len(gone)

    def _unknown(self, session: Session, row_id: int) -> None:
        row = session.get(OutboxMessage, row_id)
        if row is None:
            return
        row.status, row.last_error, row.lease_owner, row.lease_until = "unknown", UNKNOWN_ERROR, None, None
        log.warning("outbox id=%s kind=%s status=unknown: %s", row.id, row.kind, UNKNOWN_ERROR)
        self._tell(session, "delivery_unknown", row)

    def _tell(self, session: Session, hook: str, row: OutboxMessage, *args) -> None:
        """Run a delivery hook (a note, telling the reps) in a savepoint: when it fails, the
        row's own result still commits, with every other row's, and the failure is logged."""
        if self.hooks is None:
            return
        try:
            with session.begin_nested():
                getattr(self.hooks, hook)(session, row, *args)
        except Exception:
            log.exception("outbox id=%s: the %s hook failed; the row's status stands", row.id, hook)

    def _renew(self, session: Session, now: datetime, ids: set[int]) -> None:
        session.execute(SQL["renew"], {"ids": sorted(ids), "owner": self.owner, "until": now + self.lease})

    def _settle(self, session: Session, now: datetime, finished: list[Done]) -> Counter:
        """Record results: plain successes in one statement, everything else row by row."""
        counts: Counter = Counter()
        plain = []
        for c, results, error in finished:
            if error is None and results and all(200 <= code < 300 for code, _ in results.values()):
                plain.append({"rid": c.id, "res": _merge(c.previous, results), "now": now, "owner": self.owner})
            else:
                counts[self._settle_one(session, now, c, results, error)] += 1
        if plain:
            self._settle_sent(session, now, plain)
            counts["sent"] += len(plain)
        return counts

    def _settle_sent(self, session: Session, now: datetime, plain: list[dict]) -> None:
        params = plain
        result = session.execute(SQL["sent"], params)
        if result.rowcount not in (-1, len(params)):  # type: ignore[attr-defined]
            log.warning("outbox: %d of %d sent rows had lost their lease before being marked sent",
                        len(params) - result.rowcount, len(params))  # type: ignore[attr-defined]
        log.info("outbox sent=%d ids=%s", len(params), ",".join(str(p["rid"]) for p in params))

    def _settle_one(self, session: Session, now: datetime, c: Claimed, results: Results | None,
                    error: Exception | None) -> str:
        row = session.get(OutboxMessage, c.id, with_for_update=True, populate_existing=True)
        if row is None or row.status != "sending" or row.lease_owner != self.owner:
            log.warning("outbox id=%s: lease lost before its result was recorded", c.id)
            return "lost"
        row.lease_owner = row.lease_until = None
        expired = now >= aware(row.deadline_at)
        if results is not None:
            row.results = _merge(row.results, results)
        answered = {a: (v["code"], v["text"]) for a, v in (row.results or {}).items()}
        later = {a: answered[a] for a in c.recipients if a in answered and not final(answered[a][0])}
        refused = {a: answered[a] for a in c.recipients if a in answered and answered[a][0] >= 500}
        if isinstance(error, LostInData) and row.resends >= 1:
            row.status, row.last_error = "unknown", f"{UNKNOWN_ERROR} (last: {error})"
            self._tell(session, "delivery_unknown", row)
        elif error is not None and isinstance(error, Temporary) and not expired:
            if isinstance(error, LostInData):  # the relay may have it: the one resend of its life
                row.resends += 1
            self._later(row, now, str(error))
        elif error is not None:
            row.status, row.last_error = "failed", str(error)
            self._tell(session, "delivery_failed", row)
        else:
            if later and expired:
                refused |= later
                later = {}
            delivered = any(200 <= answered[a][0] < 300 for a in row.recipients if a in answered)
            if later:
                self._later(row, now, refused_words(later, "deferred"))
            elif delivered:
                row.status, row.sent_at = "sent", now
                row.last_error = refused_words(refused) if refused else None
            else:
                row.status, row.last_error = "failed", refused_words(refused)
            if refused:
                self._tell(session, "recipients_refused", row, refused)
        log.info("outbox id=%s kind=%s status=%s attempts=%s error=%s",
                 row.id, row.kind, row.status, row.attempts, row.last_error)
        return row.status

    def _later(self, row: OutboxMessage, now: datetime, error: str) -> None:
        delay = min(self.retry_base * 2 ** max(row.attempts - 1, 0), self.retry_max)
        row.status, row.next_attempt_at, row.last_error = "queued", now + timedelta(seconds=delay), error


def _merge(previous: dict | None, results: Results) -> dict:
    """Per-recipient answers as stored on the row: address -> {"code", "text"}; newest wins."""
    merged = dict(previous or {})
    merged.update({a: {"code": code, "text": text} for a, (code, text) in results.items()})
    return merged
