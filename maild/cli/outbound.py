"""Commands for what maild sends: the outbox, automatic emails, bounces."""

from __future__ import annotations

import sys

import click
from sqlalchemy import select

from maild.app import build
from maild.config import Settings
from maild.models import OutboxMessage, RawMessage, utcnow
from maild.outbound.automatic import NotifyError, send_automatic
from maild.outbound.outbox import OUTBOX_STATUSES
from maild.outbound.templates import TemplateError
from maild.timefmt import aware, iso
from maild.cli import json_option, main, print_json, reading, with_settings

# Every status an outbox row can have (models.OutboxMessage.status, set by the
# outbox, the sender and held replies); `outbox list --status` and `maild
# status` take them from here. "unknown": the relay's answer was lost mid-send.


def outbox_json(row: OutboxMessage) -> dict:
    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "mailbox": row.mailbox,
        "issue": row.issue_id,
        "recipients": list(row.recipients),
        "message_id": row.message_id,
        "attempts": row.attempts,
        "next_attempt": iso(row.next_attempt_at),
        "deadline": iso(row.deadline_at),
        "last_error": row.last_error,
        "created": iso(row.created_at),
        "sent": iso(row.sent_at),
    }


@main.group()
def outbox() -> None:
    """Mail maild sends: list, retry, send now."""


@outbox.command("list")
@with_settings
@json_option
@click.option("--status", type=click.Choice(OUTBOX_STATUSES), help="Only mail with this status.")
def outbox_list(settings: Settings, as_json: bool, status: str | None) -> None:
    """Mail in the outbox: id, status, kind, issue, recipients, last error."""
    with reading(settings) as session:
        q = select(OutboxMessage).order_by(OutboxMessage.id)
        if status:
            q = q.where(OutboxMessage.status == status)
        rows = [outbox_json(r) for r in session.scalars(q)]
    if as_json:
        print_json(rows)
        return
    for r in rows:
        issue = f"#{r['issue']}" if r["issue"] else "-"
        click.echo(f"{r['id']:<6} {r['status']:<8} {r['kind']:<15} {issue:<7} {', '.join(r['recipients'])[:40]:<40} "
                   f"{(r['last_error'] or '')[:60]}")


@outbox.command("retry")
@with_settings
@click.argument("ids", type=int, nargs=-1, required=True)
def outbox_retry(settings: Settings, ids: tuple[int, ...]) -> None:
    """Queue failed (or waiting) mail again, to be sent at once, with a fresh deadline."""
    app = build(settings)
    now = utcnow()
    with app.sessions() as session, session.begin():
        for row_id in ids:
            row = session.get(OutboxMessage, row_id, with_for_update=True)
            if row is None or row.status == "sent":
                raise click.ClickException(f"outbox message {row_id} does not exist or was sent already")
            if row.status == "sending" and row.lease_until is not None and aware(row.lease_until) > now:
                raise click.ClickException(f"outbox message {row_id} is being sent right now; "
                                           f"retry it after {iso(row.lease_until)} if it is still not sent")
            # Recipients that took it keep their answer (no second copy); refused ones are tried again.
            row.results = {a: r for a, r in (row.results or {}).items() if 200 <= r["code"] < 300} or None
            row.status, row.next_attempt_at = "queued", now
            row.lease_owner = row.lease_until = None
            row.deadline_at = now + app.notifier.policy.deadline
    click.echo(f"queued {len(ids)} message(s) again")


@outbox.command("send")
@with_settings
def outbox_send(settings: Settings) -> None:
    """Deliver what is due now, once (the daemon does this every outbound.send_interval)."""
    app = build(settings)
    counts = app.sender.run_once()
    click.echo(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing due")


def _vars(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.isidentifier():
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--var")
        out[key] = value
    return out


@main.command()
@with_settings
@click.option("--to", "to", required=True, help="Customer address.")
@click.option("--template", required=True, help="Template name (config/templates/NAME.txt.j2).")
@click.option("--var", "variables", multiple=True, help="NAME=VALUE for the template; repeatable.")
@click.option("--issue", "issue_id", type=int, help="Record it on this issue (default: a new, closed issue).")
@click.option("--mailbox", "mailbox_name", help="Mailbox it comes from (default: the issue's, or the first).")
def notify(settings, to, template, variables, issue_id, mailbox_name) -> None:
    """Send an automatic email (for example "your order shipped") through the outbox."""
    app = build(settings)
    try:
        with app.sessions() as session, session.begin():
            row = send_automatic(session, settings, app.templates, to, template, _vars(variables), issue_id, mailbox_name)
            issue, message_id = row.issue_id, row.message_id
    except (NotifyError, TemplateError) as exc:
        click.echo(f"maild: {exc}", err=True)
        sys.exit(1)
    click.echo(f"queued {message_id} on issue #{issue}")


@main.group()
def bounces() -> None:
    """Bounces that matched no mail of ours."""


@bounces.command("list")
@with_settings
@json_option
def bounces_list(settings: Settings, as_json: bool) -> None:
    """Bounces kept on their raw message because they matched no mail of ours."""
    with reading(settings) as session:
        rows = session.scalars(
            select(RawMessage).where(RawMessage.outcome == "unmatched-bounce").order_by(RawMessage.id)
        ).all()
        data = [{"id": r.id, "mailbox": r.mailbox, "received": iso(r.received_at), "size": r.size} for r in rows]
    if as_json:
        print_json(data)
    else:
        for d in data:
            click.echo(f"{d['id']:<6} {d['mailbox']:<12} {d['received']}  {d['size']} bytes")
