"""`maild status`: is mail flowing? The backlog, quarantine, outbox and failing addresses at a glance.

Read-only: it never takes the write lock, so it answers while the daemon works.
"""

from __future__ import annotations

from datetime import datetime

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maild.cli import json_option, main, print_json, reading, with_settings
from maild.outbound.outbox import OUTBOX_STATUSES
from maild.config import Settings
from maild.models import CustomerAddress, OutboxMessage, RawMessage, utcnow
from maild.timefmt import aware, iso

FAILING_SHOWN = 100  # failing addresses listed in full; the count covers them all


def status_report(session: Session, now: datetime) -> dict:
    """The documented `maild status --json` shape; fields are only ever added."""
    pending = select(func.count(), func.min(RawMessage.received_at)).where(RawMessage.state == "pending")
    backlog, oldest = session.execute(pending).one()
    quarantined = session.scalar(select(func.count()).where(RawMessage.state == "quarantined"))
    outbox = dict.fromkeys(OUTBOX_STATUSES, 0)
    for status, n in session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)):
        outbox[status] = n
    failing_q = select(CustomerAddress).where(CustomerAddress.failing_until > now)
    failing_count = session.scalar(select(func.count()).select_from(failing_q.subquery()))
    failing = session.scalars(failing_q.order_by(CustomerAddress.failing_until.desc()).limit(FAILING_SHOWN))
    return {
        "backlog": backlog,
        "oldest_pending": iso(oldest),
        "oldest_pending_age_seconds": round((now - aware(oldest)).total_seconds(), 1) if oldest else None,
        "quarantined": quarantined,
        "outbox": outbox,
        "failing_addresses_count": failing_count,
        "failing_addresses": [
            {"email": a.email, "customer_id": a.customer_id, "failing_until": iso(a.failing_until)} for a in failing
        ],
    }


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@main.command("status")
@with_settings
@json_option
def status(settings: Settings, as_json: bool) -> None:
    """Backlog, oldest pending message, quarantine, outbox by status, failing addresses."""
    with reading(settings) as session:
        report = status_report(session, utcnow())
    if as_json:
        print_json(report)
        return
    age = report["oldest_pending_age_seconds"]
    oldest = f" (oldest waiting {_age(age)}, since {report['oldest_pending']})" if age is not None else ""
    click.echo(f"backlog: {report['backlog']} message(s) stored, not yet processed{oldest}")
    click.echo(f"quarantine: {report['quarantined']} message(s)" +
               (" (see `maild quarantine list`)" if report["quarantined"] else ""))
    click.echo("outbox: " + ", ".join(f"{n} {s}" for s, n in report["outbox"].items()))
    click.echo(f"failing addresses: {report['failing_addresses_count']}")
    for a in report["failing_addresses"]:
        click.echo(f"  {a['email']} (customer {a['customer_id']}) until {a['failing_until']}")
