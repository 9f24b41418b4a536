"""The key statistics of the front page and the digest: is there something to look at?

A handful of aggregate queries; the numbers a lead reads before choosing a report.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, UTC
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from maild.models import Action, Interaction, Issue, OutboxMessage, RawMessage
from maild.reports.model import Targets
from maild.timefmt import aware, iso


def _replied():
    return exists(
        select(Action.id).join(Interaction, Interaction.id == Action.interaction_id)
        .where(Action.issue_id == Issue.id, Interaction.direction == "outbound",
               Interaction.auto_generated.is_(False))
    )


def key_statistics(session: Session, now: datetime, targets: Targets | None = None) -> dict[str, Any]:
    """open, pending, unassigned, oldest_waiting (the oldest open issue without a reply),
    opened/closed today and this week (UTC, weeks from Monday), breaches (open issues
    unanswered past the first-response target), interactions today, quarantined,
    outbox_failures (failed or unknown rows)."""
    targets = targets or Targets()
    today = datetime.combine(now.astimezone(UTC).date(), time(), UTC)
    week = today - timedelta(days=today.weekday())
    not_closed = Issue.status != "closed"
    status_counts = dict(session.execute(select(Issue.status, func.count()).group_by(Issue.status)).all())
    unassigned = session.scalar(select(func.count()).where(not_closed, Issue.assignee_id.is_(None)))
    waiting = session.execute(
        select(Issue.id, Issue.subject, Issue.opened_at)
        .where(not_closed, ~_replied()).order_by(Issue.opened_at, Issue.id).limit(1)
    ).first()
    breaches = session.scalar(select(func.count()).where(
        not_closed, ~_replied(), Issue.opened_at < now - timedelta(hours=targets.first_response_hours)))
    counts = session.execute(select(
        func.count().filter(Issue.opened_at >= today),
        func.count().filter(Issue.opened_at >= week),
    ).where(Issue.opened_at >= min(today, week))).one()
    closed = session.execute(select(
        func.count().filter(Issue.closed_at >= today),
        func.count().filter(Issue.closed_at >= week),
    ).where(Issue.closed_at >= min(today, week))).one()
    interactions_today = session.scalar(select(func.count()).where(Interaction.created_at >= today))
    quarantined = session.scalar(select(func.count()).where(RawMessage.state == "quarantined"))
    failures = session.scalar(select(func.count()).where(OutboxMessage.status.in_(("failed", "unknown"))))
    oldest = None
    if waiting is not None:
        opened = aware(waiting.opened_at)
        oldest = {"issue_id": waiting.id, "subject": waiting.subject, "since": iso(opened),
                  "age_seconds": round((now - opened).total_seconds(), 1)}
    return {
        "open": int(status_counts.get("open", 0)),
        "pending": int(status_counts.get("pending", 0)),
        "unassigned": int(unassigned or 0),
        "oldest_waiting": oldest,
        "opened_today": int(counts[0] or 0),
        "opened_this_week": int(counts[1] or 0),
        "closed_today": int(closed[0] or 0),
        "closed_this_week": int(closed[1] or 0),
        "breaches": int(breaches or 0),
        "interactions_today": int(interactions_today or 0),
        "quarantined": int(quarantined or 0),
        "outbox_failures": int(failures or 0),
    }


STATISTIC_LABELS = {
    "open": "Open issues",
    "pending": "Pending issues",
    "unassigned": "Unassigned (open or pending)",
    "oldest_waiting": "Oldest waiting for a first reply",
    "opened_today": "Opened today",
    "opened_this_week": "Opened this week",
    "closed_today": "Closed today",
    "closed_this_week": "Closed this week",
    "breaches": "Unanswered past the first-response target",
    "interactions_today": "Interactions today",
    "quarantined": "Messages in quarantine",
    "outbox_failures": "Outgoing mail failed",
}
