"""The reports by name, and running one: filters applied, sorted, totalled.

Each report's numbers come from one aggregate SQL statement (or a small fixed
number of them) in the modules beside this one; here only the finished
aggregate rows (one per category, rep, channel or day) are sorted and summed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from maild.models import utcnow
from maild.reports import activity, issues
from maild.reports.filters import Filters, FilterError
from maild.reports.model import Column, Context, Report, ReportSpec, Targets

C = Column

REPORTS: dict[str, ReportSpec] = {
    spec.name: spec
    for spec in (
        ReportSpec(
            "issue-types", "Issue types",
            "Issues opened per category in the period, beside the previous period of the same length.",
            (C("category", "text", "Category"), C("issues", "int", "Issues", True),
             C("previous", "int", "Previous period", True), C("change", "int", "Change", True),
             C("change_pct", "percent", "Change %"), C("open", "int", "Still open", True)),
            "issues", True, "category", ("issues", "previous"), "bar", issues.issue_types,
        ),
        ReportSpec(
            "reps", "Reps' load",
            "Per rep: interactions handled (their mail, replies, notes), replies sent, notes, "
            "issues closed (assigned to them) in the period.",
            (C("rep", "text", "Rep"), C("email", "text", "Email"), C("interactions", "int", "Interactions", True),
             C("replies", "int", "Replies", True), C("notes", "int", "Notes", True),
             C("issues_closed", "int", "Issues closed", True), C("issues_assigned", "int", "Open assigned", True)),
            "interactions", True, "rep", ("interactions", "replies", "notes"), "bar", activity.reps,
        ),
        ReportSpec(
            "resources", "Resources used",
            "Canned responses inserted into replies and notes in the period: uses, issues, reps.",
            (C("resource", "text", "Resource"), C("kind", "text", "Kind"), C("uses", "int", "Uses", True),
             C("issues", "int", "Issues"), C("reps", "int", "Reps")),
            "uses", True, "resource", ("uses",), "bar", activity.resources,
        ),
        ReportSpec(
            "turnaround", "Turnaround",
            "Issues opened in the period, by category and by rep: first response and resolution "
            "(median, 90th percentile, share within target) and breaches.",
            (C("by", "text", "By"), C("name", "text", "Name"), C("issues", "int", "Issues"),
             C("first_response_median_h", "hours", "First response median (h)"),
             C("first_response_p90_h", "hours", "First response p90 (h)"),
             C("first_response_within_pct", "percent", "Responded within target %"),
             C("resolution_median_h", "hours", "Resolution median (h)"),
             C("resolution_p90_h", "hours", "Resolution p90 (h)"),
             C("resolution_within_pct", "percent", "Resolved within target %"),
             C("breaches", "int", "Breaches")),
            "issues", True, "name", ("first_response_median_h", "resolution_median_h"), "bar", issues.turnaround,
        ),
        ReportSpec(
            "backlog", "Backlog over time",
            "Per day: issues opened, issues closed, issues open at the day's end (UTC).",
            (C("day", "date", "Day"), C("opened", "int", "Opened", True), C("closed", "int", "Closed", True),
             C("open", "int", "Open at day's end")),
            "day", False, "day", ("opened", "closed", "open"), "line", issues.backlog,
        ),
        ReportSpec(
            "channels", "Channels",
            "Interactions in the period by channel and direction: count, automatic ones, customers.",
            (C("channel", "text", "Channel"), C("direction", "text", "Direction"),
             C("interactions", "int", "Interactions", True), C("automatic", "int", "Automatic", True),
             C("customers", "int", "Customers")),
            "interactions", True, "channel", ("interactions",), "bar", activity.channels,
        ),
    )
}


class ReportError(ValueError):
    """An unknown report or sort column; the message lists what exists."""


def _sort_key(value: Any) -> tuple:
    return (value is None, value if value is not None else 0)


def _totals(spec: ReportSpec, rows: list[tuple]) -> tuple | None:
    if not any(c.total for c in spec.columns):
        return None
    return tuple(
        sum(row[i] or 0 for row in rows) if c.total else ("Total" if i == 0 else None)
        for i, c in enumerate(spec.columns)
    )


def run_report(
    session: Session,
    name: str,
    filters: Filters,
    sort: str | None = None,
    desc: bool = False,
    *,
    now: datetime | None = None,
    targets: Targets | None = None,
) -> Report:
    """Run report `name` over `filters`, sorted by column `sort` (its default when None)."""
    spec = REPORTS.get(name)
    if spec is None:
        raise ReportError(f"no report named {name!r} (reports: {', '.join(REPORTS)})")
    if sort is None:
        sort, desc = spec.default_sort, spec.default_desc
    elif sort not in spec.column_names:
        raise ReportError(f"report {name!r} has no column {sort!r} (columns: {', '.join(spec.column_names)})")
    now = now or utcnow()
    try:
        window = filters.window(now)
    except FilterError as exc:
        raise ReportError(str(exc)) from None
    rows = [tuple(r) for r in spec.query(session, Context(filters, window, now, targets or Targets()))]
    index = spec.column_names.index(sort)
    # Stable: ties keep the label order the query gave; empty values last either way.
    rows.sort(key=lambda r: _sort_key(r[0]))
    present = [r for r in rows if r[index] is not None]
    missing = [r for r in rows if r[index] is None]
    present.sort(key=lambda r: r[index], reverse=desc)
    rows = present + missing
    return Report(spec, filters, window, sort, desc, rows, _totals(spec, rows))
