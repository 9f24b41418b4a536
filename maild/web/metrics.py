"""/metrics and /healthz: what an operator alerts on, and what a load balancer or systemd asks.

The numbers that live in the database (backlog, oldest pending message,
messages by outcome, quarantine, outbox rows by status, delivery latency) are
read on each scrape by a custom collector (with turnaround breaches and failing self-tests), so they are right whichever process
wrote them. SMTP sessions are counted by the daemon (`Daemon.sessions_opened`);
accepted and refused transactions are counted from the SMTP edge's log lines,
whose `code=` and `reason=` fields the README documents, so the edge needs no
knowledge of metrics (`maild run` always logs at INFO or below, so none is missed). Metric names start with `maild_`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from threading import Lock

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from maild.models import Issue, OutboxMessage, RawMessage, SelftestAlert, TurnaroundNotice, utcnow
from maild.outbound.outbox import OUTBOX_STATUSES
from maild.timefmt import aware

RAW_STATES = ("pending", "done", "quarantined", "discarded")
# Seconds from queueing to the relay's 250: where most mail should fall, and the slow tail.
LATENCY_BUCKETS = (1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)
_REFUSED = re.compile(r"^refused proto=(\w+) .*code=(\d{3}) reason=([\w-]+)")
_ACCEPTED = re.compile(r"^accepted proto=(\w+) ")


class SmtpLogCounter(logging.Filter):
    """Counts the SMTP edge's `accepted` and `refused` lines as they are logged (never drops one)."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted: Counter[str] = Counter()
        self.refused: Counter[tuple[str, str, str]] = Counter()
        self._lock = Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith(("accepted", "refused")):
            line = record.getMessage()
            with self._lock:
                if m := _REFUSED.match(line):
                    self.refused[(m.group(1), m.group(2), m.group(3))] += 1
                elif m := _ACCEPTED.match(line):
                    self.accepted[m.group(1)] += 1
        return True

    def snapshot(self) -> tuple[dict[str, int], dict[tuple[str, str, str], int]]:
        with self._lock:
            return dict(self.accepted), dict(self.refused)


class DatabaseCollector(Collector):
    """Reads the figures that live in the database, at each scrape (a handful of aggregate queries)."""

    def __init__(self, sessions: sessionmaker[Session], smtp: SmtpLogCounter,
                 sessions_opened: Callable[[], dict[str, int]]) -> None:
        self.sessions, self.smtp, self.sessions_opened = sessions, smtp, sessions_opened

    def collect(self):
        with self.sessions() as session:
            yield from self._raw(session)
            yield from self._outbox(session)
            yield from self._turnaround(session)
        yield from self._smtp()

    def _raw(self, session: Session):
        states = dict(session.execute(select(RawMessage.state, func.count()).group_by(RawMessage.state)).all())
        backlog = GaugeMetricFamily("maild_backlog_messages", "Messages stored and not yet processed.")
        backlog.add_metric([], states.get("pending", 0))
        yield backlog
        quarantine = GaugeMetricFamily("maild_quarantine_messages", "Messages in quarantine, waiting for a retry or discard.")
        quarantine.add_metric([], states.get("quarantined", 0))
        yield quarantine
        stored = GaugeMetricFamily("maild_raw_messages", "Stored messages by state.", labels=["state"])
        for state in sorted(set(RAW_STATES) | set(states)):
            stored.add_metric([state], states.get(state, 0))
        yield stored
        oldest = session.scalar(select(func.min(RawMessage.received_at)).where(RawMessage.state == "pending"))
        age = GaugeMetricFamily("maild_oldest_pending_seconds", "Age of the oldest message not yet processed (0: none).")
        age.add_metric([], max(0.0, (utcnow() - aware(oldest)).total_seconds()) if oldest else 0.0)
        yield age
        outcome = func.coalesce(RawMessage.outcome, "interaction")
        processed = CounterMetricFamily("maild_processed_messages", "Messages processed, by what the pipeline made of them.",
                                        labels=["outcome"])
        for name, n in session.execute(select(outcome, func.count()).where(RawMessage.state == "done").group_by(outcome)):
            processed.add_metric([name], n)
        yield processed

    def _outbox(self, session: Session):
        statuses = dict(session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all())
        rows = GaugeMetricFamily("maild_outbox_messages", "Outbox rows by status.", labels=["status"])
        for status in sorted(set(OUTBOX_STATUSES) | set(statuses)):
            rows.add_metric([status], statuses.get(status, 0))
        yield rows
        yield self._latency(session)

    def _latency(self, session: Session) -> HistogramMetricFamily:
        """Queue-to-250 seconds of every sent row, as a histogram: one aggregate query."""
        if session.get_bind().dialect.name == "sqlite":
            seconds = (func.julianday(OutboxMessage.sent_at) - func.julianday(OutboxMessage.created_at)) * 86400.0
        else:
            seconds = func.extract("epoch", OutboxMessage.sent_at - OutboxMessage.created_at)
        sent = OutboxMessage.status == "sent"
        columns = [func.count(), func.coalesce(func.sum(seconds), 0.0)]
        columns += [func.coalesce(func.sum(case((seconds <= b, 1), else_=0)), 0) for b in LATENCY_BUCKETS]
        count, total, *within = session.execute(select(*columns).where(sent, OutboxMessage.sent_at.is_not(None))).one()
        buckets = [(str(b), int(n)) for b, n in zip(LATENCY_BUCKETS, within)] + [("+Inf", int(count))]
        hist = HistogramMetricFamily("maild_delivery_seconds", "Seconds from queueing to the relay's acceptance.")
        hist.add_metric([], buckets, sum_value=float(total))
        return hist

    def _turnaround(self, session: Session):
        breached = GaugeMetricFamily("maild_issues_breached", "Issues not closed that missed a turnaround target.")
        breached.add_metric([], session.scalar(select(func.count(Issue.id)).where(
            Issue.status != "closed", Issue.breached_at.is_not(None))) or 0)
        yield breached
        notices = CounterMetricFamily("maild_turnaround_notices", "Turnaround reminders and escalations sent.",
                                      labels=["target", "kind"])
        for target, kind, n in session.execute(select(TurnaroundNotice.target, TurnaroundNotice.kind, func.count())
                                               .group_by(TurnaroundNotice.target, TurnaroundNotice.kind)):
            notices.add_metric([target, kind], n)
        yield notices
        failing = GaugeMetricFamily("maild_selftest_failing", "Support addresses whose self-test probes stopped "
                                    "coming back in time (1 each; none listed when all are well).",
                                    labels=["mailbox", "address"])
        for mailbox, address in session.execute(select(SelftestAlert.mailbox, SelftestAlert.address).limit(1000)):
            failing.add_metric([mailbox, address], 1)
        yield failing

    def _smtp(self):
        accepted, refused = self.smtp.snapshot()
        opened = CounterMetricFamily("maild_smtp_sessions", "SMTP and LMTP connections opened.", labels=["proto"])
        for proto, n in sorted(self.sessions_opened().items()):
            opened.add_metric([proto], n)
        yield opened
        acc = CounterMetricFamily("maild_smtp_accepted", "Messages answered 250 at the SMTP/LMTP edge.", labels=["proto"])
        for proto, n in sorted(accepted.items()):
            acc.add_metric([proto], n)
        yield acc
        ref = CounterMetricFamily("maild_smtp_refused", "Commands refused at the SMTP/LMTP edge.",
                                  labels=["proto", "code", "reason"])
        for (proto, code, reason), n in sorted(refused.items()):
            ref.add_metric([proto, code, reason], n)
        yield ref


class Metrics:
    """The registry /metrics renders, and /healthz's check."""

    def __init__(self, sessions: sessionmaker[Session], sessions_opened: Callable[[], dict[str, int]]) -> None:
        self.sessions = sessions
        self.smtp = SmtpLogCounter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DatabaseCollector(sessions, self.smtp, sessions_opened))

    def install(self) -> None:
        logging.getLogger("maild.smtp").addFilter(self.smtp)

    def uninstall(self) -> None:
        logging.getLogger("maild.smtp").removeFilter(self.smtp)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def database_ok(self) -> str | None:
        """None when the database answers; else why not, in one line."""
        try:
            with self.sessions() as session:
                session.execute(text("SELECT 1"))
            return None
        except Exception as exc:  # any failure is the answer: unhealthy
            return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
