"""SQL pieces the reports share: filters as WHERE clauses, durations, days, percentiles.

Written once for SQLite and PostgreSQL, so each report stays one readable
aggregate statement. SQLite has no percentile function and no floor() in every
build: percentiles are computed from ROW_NUMBER() with integer arithmetic.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Float, and_, case, cast, exists, func, literal, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from maild.models import Action, Category, Interaction, Issue, Rep
from maild.reports.filters import Filters, Window


def dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def at(value: datetime) -> ColumnElement[Any]:
    """A time as a typed SQL value (stored the way the columns store it on each backend)."""
    return literal(value, DateTime(timezone=True))


def within(column: Any, window: Window) -> ColumnElement[bool]:
    return and_(column >= window.start, column < window.end)


def seconds_between(kind: str, later: Any, earlier: Any) -> ColumnElement[Any]:
    """later - earlier in seconds (NULL when either is NULL)."""
    if kind == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return cast(func.extract("epoch", later - earlier), Float)


def day_of(kind: str, column: Any) -> ColumnElement[str]:
    """The UTC day of a timestamp as 'YYYY-MM-DD'."""
    if kind == "sqlite":
        return func.date(column)
    return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")


def percentile(value: Any, rank: Any, count: Any, num: int, den: int) -> ColumnElement[Any]:
    """The num/den percentile of `value` within a group, interpolated linearly between
    the two nearest ranks (as PostgreSQL's percentile_cont). Aggregate this with SUM
    over rows carrying `rank` (1-based ROW_NUMBER) and `count` (rows in the group)."""
    scaled = num * (count - 1)
    low = 1 + scaled // den  # integer division on both backends
    frac = (scaled - den * (scaled // den)) * 1.0 / den
    return func.sum(case((rank == low, value * (1 - frac)), (rank == low + 1, value * frac), else_=0.0))


def _rep_ids(name: str):
    return select(Rep.id).where(or_(func.lower(Rep.email) == name.lower(), Rep.name == name))


def _category_ids(name: str):
    return select(Category.id).where(Category.name == name)


def issue_filters(filters: Filters, issue: Any = None) -> list[ColumnElement[bool]]:
    """Filters on issues: mailbox, category, priority, rep (the assignee), channel
    (the issue has an interaction on that channel)."""
    t = issue if issue is not None else Issue.__table__.c
    out: list[ColumnElement[bool]] = []
    if filters.mailbox:
        out.append(t.mailbox == filters.mailbox)
    if filters.category:
        out.append(t.category_id.in_(_category_ids(filters.category)))
    if filters.priority:
        out.append(t.priority == filters.priority)
    if filters.rep:
        out.append(t.assignee_id.in_(_rep_ids(filters.rep)))
    if filters.channel:
        out.append(exists(
            select(Action.id).join(Interaction, Interaction.id == Action.interaction_id)
            .where(Action.issue_id == t.id, Interaction.channel == filters.channel)
        ))
    return out


def interaction_filters(filters: Filters) -> list[ColumnElement[bool]]:
    """Filters on interactions: mailbox, rep (the interaction's rep), channel; category and
    priority through the issues the interaction is on."""
    out: list[ColumnElement[bool]] = []
    if filters.mailbox:
        out.append(Interaction.mailbox == filters.mailbox)
    if filters.rep:
        out.append(Interaction.rep_id.in_(_rep_ids(filters.rep)))
    if filters.channel:
        out.append(Interaction.channel == filters.channel)
    issue_side = issue_filters(Filters(category=filters.category, priority=filters.priority))
    if issue_side:
        out.append(exists(
            select(Action.id).join(Issue, Issue.id == Action.issue_id)
            .where(Action.interaction_id == Interaction.id, *issue_side)
        ))
    return out


def hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600.0, 2)


def share(part: int | None, whole: int | None) -> float | None:
    return None if not whole else round(100.0 * (part or 0) / whole, 1)
