"""`maild sla`: turnaround targets by hand: one reminder pass, and where each issue stands."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from sqlalchemy import select

from maild.app import build
from maild.cli import json_option, main, print_json, reading, with_settings
from maild.config import Settings
from maild.desk.turnaround import Turnaround, pauses_of
from maild.models import Issue, TurnaroundNotice, utcnow
from maild.timefmt import aware, iso


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return aware(datetime.fromisoformat(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (2026-11-02T09:30:00+01:00)",
                                 param_hint="--now") from None


@main.group()
def sla() -> None:
    """Turnaround targets: reminders, escalations, first-response and resolution times."""


@sla.command("check")
@with_settings
@json_option
@click.option("--now", "now", help="Judge as if it were this ISO 8601 time (default: now).")
def sla_check(settings: Settings, as_json: bool, now: str | None) -> None:
    """One reminder pass, as the daemon runs every sla.interval: due reminders and escalations queued."""
    app = build(settings)
    try:
        counts = app.reminders.check(_when(now))
    finally:
        app.close()
    if as_json:
        print_json({"reminder": counts.get("reminder", 0), "escalation": counts.get("escalation", 0)})
    else:
        click.echo(f"{counts.get('reminder', 0)} reminder(s), {counts.get('escalation', 0)} escalation(s) queued")


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600, 2)


@sla.command("list")
@with_settings
@json_option
@click.option("--all", "everything", is_flag=True, help="Closed issues too (default: open and pending).")
@click.option("--now", "now", help="Measure as if it were this ISO 8601 time (default: now).")
def sla_list(settings: Settings, as_json: bool, everything: bool, now: str | None) -> None:
    """Each issue's targets and business hours so far (or as recorded), and its breaches."""
    at = _when(now) or utcnow()
    turnaround = Turnaround(settings)
    rows: list[dict[str, Any]] = []
    with reading(settings) as session:
        q = select(Issue).order_by(Issue.id)
        if not everything:
            q = q.where(Issue.status != "closed")
        issues = list(session.scalars(q))
        pauses = pauses_of(session, [i.id for i in issues])
        breaches: dict[int, list[str]] = {}
        for issue_id, target in session.execute(select(TurnaroundNotice.issue_id, TurnaroundNotice.target)
                                                .where(TurnaroundNotice.kind == "escalation")):
            breaches.setdefault(issue_id, []).append(target)
        for issue in issues:
            targets = turnaround.issue_targets(issue)
            so_far = turnaround.measure(issue, at, pauses.get(issue.id, []))
            first = issue.first_response_seconds if issue.first_response_at is not None else None
            resolution = issue.resolution_seconds if issue.status == "closed" else None
            rows.append({
                "issue": issue.id, "status": issue.status, "priority": issue.priority,
                "category": issue.category.name, "calendar": targets.calendar.name if targets.calendar else "24x7",
                "first_response_hours": _hours(first), "resolution_hours": _hours(resolution),
                "open_hours": _hours(so_far) if issue.status != "closed" else None,
                "first_response_target": _hours(targets.first_response), "resolution_target": _hours(targets.resolution),
                "breached": sorted(breaches.get(issue.id, [])), "breached_at": iso(issue.breached_at),
            })
    if as_json:
        print_json(rows)
        return
    for r in rows:
        answered = f"{r['first_response_hours']}h" if r["first_response_hours"] is not None else "-"
        done = f"{r['resolution_hours']}h" if r["resolution_hours"] is not None else f"{r['open_hours']}h so far"
        click.echo(f"#{r['issue']:<6} {r['status']:<8} first response {answered:<8} (target {r['first_response_target']}h) "
                   f"resolution {done} (target {r['resolution_target'] or '-'}{'h' if r['resolution_target'] else ''})"
                   f" {r['calendar']}" + (f" BREACHED {','.join(r['breached'])}" if r["breached"] else ""))
