"""Commands for reps without mail access, or scripts: reply, canned list, reps.

`maild reply` takes exactly the path an emailed reply takes: it writes the
rep's mail to the signed reply (or note) address and ingests it, so commands,
canned responses and the spell check behave the same. It then reads what that
mail caused and says so: a refused command or a held reply exits 1 with the
reason, which otherwise goes only by mail. `maild reps address` prints a
rep's desk address.
"""

from __future__ import annotations

import email
import email.policy
import sys
import uuid
from email.message import EmailMessage
from email.utils import format_datetime

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maild import db
from maild.app import build, make_signer
from maild.config import ConfigError, RepConfig, Settings
from maild.desk.casefile import desk_address
from maild.ingest.intake import Incoming, accept
from maild.subjects import subject_tag
from maild.models import Issue, OutboxMessage, Rep, utcnow
from maild.cli import json_option, main, print_json, with_settings


def _rep_mail(rep: Rep, to: str, subject: str, body: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"{rep.name} <{rep.email}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = f"<reply.{uuid.uuid4().hex}@{rep.email.rpartition('@')[2]}>"
    msg.set_content(body)
    return msg.as_bytes()


def configured_rep(settings: Settings, who: str, option: str = "--rep") -> RepConfig:
    """The [[rep]] with this address or alias; a config error naming the reps otherwise."""
    for r in settings.rep:
        if who.strip().lower() in r.all_addresses:
            return r
    known = ", ".join(r.email for r in settings.rep) or "none"
    raise ConfigError(f"{option}: {who} is not a configured rep ([[rep]] email or alias; reps: {known})")


def _text(row: OutboxMessage) -> str:
    msg = email.message_from_bytes(row.data, policy=email.policy.default)
    part = msg.get_body(("plain",)) if isinstance(msg, EmailMessage) else None
    return part.get_content() if part is not None else ""


def _reasons(text: str, marker: str | None = None) -> str:
    """The reasons in a notice to the rep, on one line: its "  - " items, or the lines after `marker`."""
    lines = text.splitlines()
    if marker is not None and any(marker in line for line in lines):
        start = next(i for i, line in enumerate(lines) if marker in line) + 1
        items = [line.strip() for line in lines[start:] if line.strip()]
    else:
        items = [line.strip()[2:] for line in lines if line.startswith("  - ")]
    return "; ".join(items) or " ".join(text.split())[:500]


def _verdict(session: Session, after: int, issue_id: int, rep: Rep, note: bool) -> tuple[int, str]:
    """What the rep's mail caused, from the outbox rows it queued: (exit status, message)."""
    rows = list(session.scalars(select(OutboxMessage).where(
        OutboxMessage.id > after, OutboxMessage.issue_id == issue_id, OutboxMessage.rep_id == rep.id,
    ).order_by(OutboxMessage.id)))
    replies = [r for r in rows if r.kind == "reply"]
    notices = [r for r in rows if r.kind == "rep-notice" and not r.to_customer]
    held = [r for r in replies if r.status == "held"]
    if held:
        words = _reasons(_text(notices[-1]), "Words to check") if notices else ""
        return 1, (f"reply held on issue #{issue_id} by the spell check: answer with the body #send to release "
                   f"it as it is, or send a corrected reply; words to check: {words}")
    if notices and not replies:
        return 1, f"not sent on issue #{issue_id}: {_reasons(_text(notices[-1]))}"
    if note:
        return 0, f"note recorded on issue #{issue_id}"
    if replies:
        to = ", ".join(replies[-1].recipients)
        warn = f" (spelling: {_reasons(_text(notices[-1]), 'Words to check')})" if notices else ""
        return 0, f"recorded on issue #{issue_id}; reply queued to {to}{warn}"
    return 0, f"recorded on issue #{issue_id}; nothing to send"


@main.command()
@with_settings
@click.option("--issue", "issue_id", type=int, required=True, help="The issue to reply on.")
@click.option("--rep", "rep_email", required=True, help="The rep's email address (a configured [[rep]]).")
@click.option("--note", is_flag=True, help="An internal note instead of a reply to the customer.")
@click.option("--body-file", type=click.File("r"), default="-", help="The text (default: stdin).")
def reply(settings: Settings, issue_id: int, rep_email: str, note: bool, body_file) -> None:
    """Reply to an issue's customer (or add a note) as a rep, through the same path as mail.

    Exits 1 with the reason when a command is refused or the reply is held.
    """
    wanted = configured_rep(settings, rep_email)
    app = build(settings, secret_required=True)
    signer = app.signer
    if signer is None:  # build() raises first; this keeps the promise visible here
        raise ConfigError(f"security.secret_env: {settings.security.secret_env} must hold the signing secret")
    with app.sessions() as session:
        issue = session.get(Issue, issue_id)
        rep = session.scalar(select(Rep).where(func.lower(Rep.email) == wanted.email.lower(), Rep.active.is_(True)))
        if issue is None or rep is None:
            raise click.ClickException(f"no issue #{issue_id}" if issue is None else f"no rep {rep_email}")
        mailbox = settings.mailbox_named(issue.mailbox)
        to = signer.address(mailbox.address, issue.id, rep.id, "note" if note else "reply")
        subject = f"Re: {issue.subject} {subject_tag(settings.threading.tag_prefix, issue.id)}"
        raw = _rep_mail(rep, to, subject, body_file.read())
        after = session.scalar(select(func.max(OutboxMessage.id))) or 0
    accepted = accept(app.sessions, Incoming(raw, mailbox.name, "cli", envelope_to=(to,)))
    (outcome,) = app.pipeline.process([accepted.raw_id])
    if outcome.state != "done" or outcome.stored is None:
        click.echo(f"maild: quarantined at {outcome.stage}: {outcome.error}", err=True)
        sys.exit(1)
    with app.sessions() as session:
        status, message = _verdict(session, after, issue_id, rep, note)
    if status:
        click.echo(f"maild: {message}", err=True)
        sys.exit(status)
    click.echo(message)


@main.group()
def reps() -> None:
    """The configured reps and their desk addresses."""


@reps.command("address")
@with_settings
@click.argument("rep_email")
def reps_address(settings: Settings, rep_email: str) -> None:
    """A rep's own desk address: new cases, logged calls, forwards, #queue and #history by mail."""
    wanted = configured_rep(settings, rep_email, "EMAIL")
    signer = make_signer(settings, required=True)
    engine = db.make_engine(settings.database.url)
    try:
        db.migrate(engine)
        with db.session_factory(engine)() as session:
            db.sync_config(session, settings)
            rep_id = session.scalar(select(Rep.id).where(func.lower(Rep.email) == wanted.email.lower()))
    finally:
        engine.dispose()
    if rep_id is None:  # sync_config has just written it
        raise click.ClickException(f"rep {wanted.email} is not in the database")
    click.echo(desk_address(settings, signer, rep_id))


@reps.command("list")
@with_settings
@json_option
def reps_list(settings: Settings, as_json: bool) -> None:
    """The configured reps: name, email, short name, aliases."""
    rows = [{"name": r.name, "email": r.email, "short_name": r.short_name, "aliases": list(r.aliases)}
            for r in settings.rep]
    if as_json:
        print_json(rows)
    else:
        for r in rows:
            short = f" ({r['short_name']})" if r["short_name"] else ""
            click.echo(f"{r['name']}{short} <{r['email']}>")


@main.group()
def canned() -> None:
    """Canned responses from the config."""


@canned.command("list")
@with_settings
@json_option
def canned_list(settings: Settings, as_json: bool) -> None:
    """Canned responses from the config: name and description (--json: with the body)."""
    rows = [{"name": c.name, "description": c.description, "body": c.body} for c in settings.canned]
    if as_json:
        print_json(rows)
    else:
        for r in rows:
            click.echo(f"{r['name']:<24} {r['description']}")
