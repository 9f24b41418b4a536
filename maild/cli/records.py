"""Commands that show and change what maild recorded: issues, customers, quarantine."""

from __future__ import annotations

import click
from sqlalchemy import update

from maild.desk import queries
from maild.ingest import quarantine as quarantine_view
from maild.app import build
from maild.config import Settings
from maild.models import RawMessage
from maild.cli import json_option, main, reading, print_json, with_settings
from maild.cli.issues import issues_list, issues_merge, issues_search


def _who(i: dict) -> str:
    who = f"{i['from_name']} <{i['from']}>" if i["from_name"] and i["from"] else (i["from"] or i["from_name"] or "-")
    if not i.get("rep_name"):
        return who
    return f"{who} (to rep {i['rep_name']})" if i["auto"] else f"{who} (rep {i['rep_name']})"


def issue_text(data: dict) -> list[str]:
    """A whole case as a rep reads it: the issue's fields, then each interaction in order."""
    record = data["customer_record"]
    customer = data["customer"] or "-"
    if record and record["name"]:
        customer = f"{record['name']} <{customer}> (customer {record['id']})"
    elif record:
        customer = f"{customer} (customer {record['id']})"
    fields = [
        ("Issue", f"#{data['id']}"), ("Subject", data["subject"]), ("Status", data["status"]),
        ("Category", data["category"]), ("Priority", data["priority"]), ("Mailbox", data["mailbox"]),
        ("Customer", customer), ("Assignee", data["assignee"] or "-"),
        ("Tags", " ".join(data["tags"]) or "-"), ("Cc", ", ".join(data["cc"]) or "-"),
        ("Created", data["created"]), ("Updated", data["updated"] or "-"), ("Closed", data["closed"] or "-"),
        ("Order", data["order_id"] or "-"), ("Gift certificate", data["gift_certificate_id"] or "-"),
    ]
    if data.get("merged_into"):
        fields.append(("Merged into", f"#{data['merged_into']}"))
    lines = [f"{name + ':':<18}{value}" for name, value in fields]
    for n, i in enumerate(data["interactions"], 1):
        auto = f" [auto: {i['auto']}]" if i["auto"] else ""
        lines += ["", f"--- {n}. {i['direction']} {i['kind']} from {_who(i)}, {i['date'] or i['created']}{auto}"]
        lines += [f"Subject: {i['subject']}"]
        lines += [f"Follow-up: {f}" for f in i["follow_up_required"]]
        lines += [f"Picked {name}: {', '.join(values)}" for name, values in i.get("picks", {}).items()]
        lines += [f"Attachment: {a['filename']} ({a['content_type']}, {a['size']} bytes)" for a in i["attachments"]]
        lines += ["", i["new_text"].rstrip()]
    if not data["interactions"]:
        lines += ["", "(no interactions)"]
    if data.get("notices"):
        lines += ["", "Notices to reps (mail about the issue, not correspondence):"]
        lines += [f"  {n['created']}  {n['kind']:<12} to {', '.join(n['to'])}  {n['status']}  {n['subject']}"
                  for n in data["notices"]]
    return lines


@main.group()
def issues() -> None:
    """List, search, show and merge issues."""


for _command in (issues_list, issues_search, issues_merge):  # cli/issues.py
    issues.add_command(_command)


@issues.command("show")
@with_settings
@json_option
@click.argument("issue_id", type=int)
def issues_show(settings: Settings, as_json: bool, issue_id: int) -> None:
    """An issue, its customer, its interactions in order, then the notices sent to reps about it."""
    with reading(settings) as session:
        data = queries.show_issue(session, issue_id)
    if data is None:
        raise click.ClickException(f"no issue #{issue_id}")
    if as_json:
        print_json(data)
        return
    click.echo("\n".join(issue_text(data)))


@main.group()
def quarantine() -> None:
    """Messages that failed a stage: list, show, retry, discard."""


@quarantine.command("list")
@with_settings
@json_option
def quarantine_list(settings: Settings, as_json: bool) -> None:
    """Quarantined messages: id, mailbox, the stage that failed, the error."""
    with reading(settings) as session:
        rows = quarantine_view.list_quarantine(session)
    if as_json:
        print_json(rows)
    else:
        for r in rows:
            click.echo(f"{r['id']:<6} {r['mailbox']:<12} {r['stage']:<9} {(r['error'] or '')[:80]}")


def _quarantined(session, raw_id: int) -> RawMessage:
    raw = session.get(RawMessage, raw_id)
    if raw is None or raw.state != "quarantined":
        raise click.ClickException(f"message {raw_id} is not in quarantine")
    return raw


@quarantine.command("show")
@with_settings
@json_option
@click.argument("raw_id", type=int)
def quarantine_show(settings: Settings, as_json: bool, raw_id: int) -> None:
    """One quarantined message: why it failed, and its raw text."""
    with reading(settings) as session:
        data = quarantine_view.quarantine_json(_quarantined(session, raw_id), with_raw=True)
    if as_json:
        print_json(data)
    else:
        click.echo(f"message {data['id']} ({data['mailbox']}, {data['size']} bytes, via {data['source']})")
        click.echo(f"failed at stage {data['stage']}: {data['error']}")
        click.echo("")
        click.echo(data["raw"][:4000])


@quarantine.command("retry")
@with_settings
@click.option("--all", "retry_all", is_flag=True, help="Retry every quarantined message.")
@click.argument("raw_ids", type=int, nargs=-1)
def quarantine_retry(settings: Settings, retry_all: bool, raw_ids: tuple[int, ...]) -> None:
    """Run quarantined messages through the pipeline again (stored exactly once)."""
    if not raw_ids and not retry_all:
        raise click.ClickException("name the messages to retry (ids from `maild quarantine list`) or pass --all")
    if raw_ids and retry_all:
        raise click.ClickException("give message ids or --all, not both")
    app = build(settings)
    with app.sessions() as session, session.begin():
        if retry_all:
            raw_ids = tuple(r["id"] for r in quarantine_view.list_quarantine(session))
            if not raw_ids:
                raise click.ClickException("nothing in quarantine to retry")
        for rid in raw_ids:
            _quarantined(session, rid).state = "pending"
    for o in app.pipeline.process(raw_ids):
        if o.stored:
            click.echo(f"{o.raw_id}: {o.stored.outcome}" + (f" issue {o.stored.issue_id}" if o.stored.issue_id else ""))
        else:
            click.echo(f"{o.raw_id}: quarantined again at {o.stage}: {o.error}")


@quarantine.command("discard")
@with_settings
@click.argument("raw_ids", type=int, nargs=-1, required=True)
def quarantine_discard(settings: Settings, raw_ids: tuple[int, ...]) -> None:
    """Give up on quarantined messages (the raw bytes are kept, marked discarded)."""
    app = build(settings)
    with app.sessions() as session, session.begin():
        for rid in raw_ids:
            _quarantined(session, rid)
        session.execute(update(RawMessage).where(RawMessage.id.in_(raw_ids)).values(state="discarded"))
    click.echo(f"discarded {len(raw_ids)} message(s)")
