"""Turnaround: which targets an issue has, and how long it has taken so far.

The seed asks that customers get an answer within 24 hours. For every issue
maild records the first response (the first rep reply queued to the
customer) and the resolution (its close), both counted in business seconds
under the issue's calendar, with the stretches it spent pending (waiting for
the customer) taken out.

These facts are recorded by a flush hook on the session factory (`track`),
so every path that queues a rep's reply or changes an issue's status through
the ORM (a rep's mail, `maild reply`, a command) records them in its own
transaction, without knowing about turnaround. Paths that change the status
with plain SQL are caught up by `reconcile` at each reminder pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event, inspect, select, update
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.desk.calendar import Calendar, elapsed
from maild.models import Issue, IssuePause, OutboxMessage, utcnow
from maild.timefmt import aware

log = logging.getLogger("maild.turnaround")

TARGETS = ("first_response", "resolution")
Pause = tuple[datetime, datetime | None]


@dataclass(frozen=True)
class Targets:
    """An issue's targets in business seconds (resolution None: no target) and its calendar."""

    first_response: float
    resolution: float | None
    calendar: Calendar | None  # None: 24x7

    def of(self, target: str) -> float | None:
        return self.first_response if target == "first_response" else self.resolution


class Turnaround:
    """The configured policies and calendars, and the measurements made with them."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.clock = clock  # when a reply or status change counts as made (tests inject it)
        self.calendars = {c.name: Calendar.from_config(c) for c in settings.calendar}

    def calendar_for(self, mailbox: str, category: str) -> Calendar | None:
        """A category's calendar, else the mailbox's, else [sla] calendar, else 24x7."""
        for cfg in self.settings.calendar:
            if category in cfg.categories:
                return self.calendars[cfg.name]
        for cfg in self.settings.calendar:
            if mailbox in cfg.mailboxes:
                return self.calendars[cfg.name]
        sla = self.settings.sla.calendar
        return self.calendars[sla] if sla else None

    def targets(self, mailbox: str, category: str, priority: str) -> Targets:
        """The first [[turnaround]] whose category and priority match; unset values from [sla]."""
        sla = self.settings.sla
        policy = next((p for p in self.settings.turnaround
                       if p.category in (None, category) and p.priority in (None, priority)), None)
        first = (policy.first_response_hours if policy else None) or sla.first_response_hours
        resolution = (policy.resolution_hours if policy else None) or sla.resolution_hours
        calendar = self.calendars[policy.calendar] if policy and policy.calendar else self.calendar_for(
            mailbox, category)
        return Targets(first * 3600, resolution * 3600 if resolution else None, calendar)

    def issue_targets(self, issue: Issue) -> Targets:
        return self.targets(issue.mailbox, issue.category.name, issue.priority)

    def measure(self, issue: Issue, until: datetime, pauses: Iterable[Pause], limit: float | None = None) -> float:
        """Business seconds from the issue's opening to `until`, without its pauses."""
        calendar = self.issue_targets(issue).calendar
        return elapsed(calendar, aware(issue.opened_at), until, list(pauses), limit)


def pauses_of(session: Session, issue_ids: Iterable[int]) -> dict[int, list[Pause]]:
    """Every pending stretch of these issues (an open one has no end)."""
    out: dict[int, list[Pause]] = {}
    ids = list(issue_ids)
    for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
        for p in session.scalars(select(IssuePause).where(IssuePause.issue_id.in_(chunk))):
            out.setdefault(p.issue_id, []).append((aware(p.started_at), aware(p.ended_at) if p.ended_at else None))
    return out


def _responded(session: Session, turnaround: Turnaround, issue_id: int, now: datetime) -> None:
    issue = session.get(Issue, issue_id)
    if issue is None or issue.first_response_at is not None:
        return
    issue.first_response_at = now
    issue.first_response_seconds = round(turnaround.measure(issue, now, pauses_of(session, [issue_id]).get(issue_id, [])))
    log.info("first response issue=%s after %ss of business time", issue_id, issue.first_response_seconds)


def _status_changed(session: Session, turnaround: Turnaround, issue: Issue, old: str | None, now: datetime) -> None:
    if old == issue.status:
        return
    if old == "pending":
        session.execute(update(IssuePause).where(IssuePause.issue_id == issue.id, IssuePause.ended_at.is_(None))
                        .values(ended_at=now))
    if issue.status == "pending":
        session.add(IssuePause(issue_id=issue.id, started_at=now))
    if issue.status == "closed":
        pauses = pauses_of(session, [issue.id]).get(issue.id, [])
        issue.resolution_seconds = round(turnaround.measure(issue, now, pauses))
    elif old == "closed":
        issue.resolution_seconds = None  # reopened: resolved again at the next close


def track(sessions: sessionmaker[Session], turnaround: Turnaround) -> None:
    """Record first responses, pauses and resolutions in every session from `sessions`, as they flush."""

    def before_flush(session: Session, _context, _instances) -> None:
        now = turnaround.clock()
        with session.no_autoflush:
            for obj in (*session.new, *session.dirty):
                if (isinstance(obj, OutboxMessage) and obj.kind == "reply" and obj.to_customer
                        and obj.status == "queued" and obj.issue_id is not None):
                    _responded(session, turnaround, obj.issue_id, now)
            for obj in list(session.dirty):
                if isinstance(obj, Issue):
                    history = inspect(obj).attrs.status.history
                    if history.has_changes():
                        _status_changed(session, turnaround, obj, (history.deleted or [None])[0], now)

    event.listen(sessions, "before_flush", before_flush)


def reconcile(session: Session, now: datetime) -> int:
    """Pauses in step with statuses changed by plain SQL: an open pause of an issue no longer
    pending ends at the issue's last update; a pending issue without one gets one from then."""
    fixed = 0
    stale = session.execute(select(IssuePause, Issue.updated_at).join(Issue, Issue.id == IssuePause.issue_id)
                            .where(IssuePause.ended_at.is_(None), Issue.status != "pending")).all()
    for pause, updated in stale:
        pause.ended_at = max(aware(pause.started_at), min(aware(updated), now))
        fixed += 1
    paused = select(IssuePause.issue_id).where(IssuePause.ended_at.is_(None))
    for issue_id, updated in session.execute(select(Issue.id, Issue.updated_at).where(
            Issue.status == "pending", Issue.id.not_in(paused))):
        session.add(IssuePause(issue_id=issue_id, started_at=min(aware(updated), now)))
        fixed += 1
    return fixed
