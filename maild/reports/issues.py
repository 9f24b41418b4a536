"""Reports over issues: issue types and their trend, turnaround, backlog over time.

Each is one aggregate statement (backlog: one, plus the open count at the
start); Python only shapes the few aggregate rows. First response is the first
non-automatic outbound interaction on the issue, resolution is closed_at: the
turnaround timestamps of issue 16 are not in the schema yet.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select, union_all
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from maild.models import Action, Category, Interaction, Issue, Rep
from maild.reports.model import Context
from maild.reports.sql import (
    at, day_of, dialect, hours, issue_filters, percentile, seconds_between, share, within,
)


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.sum(case((condition, 1), else_=0))


def issue_types(session: Session, ctx: Context) -> list[tuple]:
    """Per category: issues opened in the period, in the previous period, the change, still open."""
    window, previous = ctx.window, ctx.window.previous
    now_in = within(Issue.opened_at, window)
    q = (
        select(
            Category.name,
            _count_if(now_in),
            _count_if(within(Issue.opened_at, previous)),
            _count_if(and_(now_in, Issue.status != "closed")),
        )
        .join(Category, Category.id == Issue.category_id)
        .where(Issue.opened_at >= previous.start, Issue.opened_at < window.end, *issue_filters(ctx.filters))
        .group_by(Category.name)
    )
    rows = []
    for name, current, before, still_open in session.execute(q):
        current, before = int(current or 0), int(before or 0)
        pct = round(100.0 * (current - before) / before, 1) if before else None
        rows.append((name, current, before, current - before, pct, int(still_open or 0)))
    return rows


def _first_reply():
    """The time of an issue's first reply: its first non-automatic outbound interaction."""
    return (
        select(func.min(Interaction.created_at))
        .join(Action, Action.interaction_id == Interaction.id)
        .where(Action.issue_id == Issue.id, Interaction.direction == "outbound",
               Interaction.auto_generated.is_(False))
        .scalar_subquery()
    )


def turnaround(session: Session, ctx: Context) -> list[tuple]:
    """Issues opened in the period, grouped by category and by rep (assignee)."""
    kind = dialect(session)
    until = min(ctx.window.end, ctx.now)
    t1 = ctx.targets.first_response_hours * 3600.0
    t2 = ctx.targets.resolution_hours * 3600.0
    base = (
        select(
            Category.name.label("category"),
            func.coalesce(Rep.name, "unassigned").label("rep"),
            seconds_between(kind, _first_reply(), Issue.opened_at).label("frt"),
            seconds_between(kind, Issue.closed_at, Issue.opened_at).label("res"),
            seconds_between(kind, at(until), Issue.opened_at).label("age"),
            (Issue.status == "closed").label("closed"),
        )
        .join(Category, Category.id == Issue.category_id)
        .outerjoin(Rep, Rep.id == Issue.assignee_id)
        .where(within(Issue.opened_at, ctx.window), *issue_filters(ctx.filters))
        .cte("base")
    )
    b = base.c
    # Unanswered issues breach once older than the target, unless closed without a reply.
    frt_breach = or_(b.frt > t1, and_(b.frt.is_(None), b.closed.is_(False), b.age > t1))
    res_breach = or_(b.res > t2, and_(b.res.is_(None), b.age > t2))
    flags = [
        case((b.frt <= t1, 1), else_=0).label("frt_ok"),
        case((or_(b.frt.is_not(None), frt_breach), 1), else_=0).label("frt_known"),
        case((b.res <= t2, 1), else_=0).label("res_ok"),
        case((or_(b.res.is_not(None), res_breach), 1), else_=0).label("res_known"),
        case((or_(frt_breach, res_breach), 1), else_=0).label("breach"),
    ]
    long = union_all(
        select(literal("category").label("by"), b.category.label("name"), b.frt, b.res, *flags),
        select(literal("rep").label("by"), b.rep.label("name"), b.frt, b.res, *flags),
    ).cte("long")
    g = long.c
    counts = (
        select(g.by, g.name, func.count().label("n"), func.sum(g.frt_ok).label("frt_ok"),
               func.sum(g.frt_known).label("frt_known"), func.sum(g.res_ok).label("res_ok"),
               func.sum(g.res_known).label("res_known"), func.sum(g.breach).label("breaches"))
        .group_by(g.by, g.name)
        .cte("counts")
    )
    pcts = [_percentiles(long, "frt"), _percentiles(long, "res")]
    c, f, r = counts.c, pcts[0].c, pcts[1].c
    q = (
        select(c.by, c.name, c.n, f.median, f.p90, c.frt_ok, c.frt_known, r.median, r.p90, c.res_ok,
               c.res_known, c.breaches)
        .select_from(counts)
        .outerjoin(pcts[0], and_(f.by == c.by, f.name == c.name))
        .outerjoin(pcts[1], and_(r.by == c.by, r.name == c.name))
        .order_by(c.by, c.name)
    )
    return [
        (by, name, int(n), hours(fm), hours(fp), share(fok, fknown), hours(rm), hours(rp), share(rok, rknown),
         int(breaches or 0))
        for by, name, n, fm, fp, fok, fknown, rm, rp, rok, rknown, breaches in session.execute(q)
    ]


def _percentiles(long, column: str):
    g = long.c
    value = g[column]
    ranked = (
        select(g.by, g.name, value.label("v"),
               func.row_number().over(partition_by=(g.by, g.name), order_by=value).label("rn"),
               func.count().over(partition_by=(g.by, g.name)).label("cnt"))
        .where(value.is_not(None))
        .cte(f"ranked_{column}")
    )
    k = ranked.c
    return (
        select(k.by, k.name, percentile(k.v, k.rn, k.cnt, 1, 2).label("median"),
               percentile(k.v, k.rn, k.cnt, 9, 10).label("p90"))
        .group_by(k.by, k.name)
        .cte(f"pct_{column}")
    )


def backlog(session: Session, ctx: Context) -> list[tuple]:
    """Per UTC day of the period: opened, closed, open at the day's end.

    Open at the day's end is counted from the issues' current opened and
    closed times (an issue reopened later counts as open from its opening)."""
    kind = dialect(session)
    window, filters = ctx.window, issue_filters(ctx.filters)
    opened_day = day_of(kind, Issue.opened_at)
    closed_day = day_of(kind, Issue.closed_at)
    per_day = union_all(
        select(opened_day, literal("opened"), func.count())
        .where(within(Issue.opened_at, window), *filters).group_by(opened_day),
        select(closed_day, literal("closed"), func.count())
        .where(within(Issue.closed_at, window), *filters).group_by(closed_day),
    )
    open_at_start = select(func.count()).select_from(Issue).where(
        Issue.opened_at < window.start, or_(Issue.closed_at.is_(None), Issue.closed_at >= window.start), *filters)
    counts: dict[tuple[str, str], int] = {(str(d), what): int(n) for d, what, n in session.execute(per_day)}
    open_now = int(session.scalar(open_at_start) or 0)
    rows = []
    day: date = window.start.date()
    last = (window.end - timedelta(microseconds=1)).date()
    while day <= last:  # one row per day of the range (bounded by filters.MAX_DAYS)
        key = day.isoformat()
        opened, closed = counts.get((key, "opened"), 0), counts.get((key, "closed"), 0)
        open_now += opened - closed
        rows.append((key, opened, closed, open_now))
        day += timedelta(days=1)
    return rows
