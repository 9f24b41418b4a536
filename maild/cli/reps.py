"""Commands for reps without mail access, or scripts: reply, canned list.

`maild reply` takes exactly the path an emailed reply takes: it writes the
rep's mail to the signed reply (or note) address and ingests it, so commands,
canned responses and the spell check behave the same.
"""

from __future__ import annotations

import sys
import uuid
from email.message import EmailMessage
from email.utils import format_datetime

import click
from sqlalchemy import func, select

from maild.app import build
from maild.config import ConfigError, Settings
from maild.ingest.intake import Incoming, accept
from maild.subjects import subject_tag
from maild.models import Issue, Rep, utcnow
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


@main.command()
@with_settings
@click.option("--issue", "issue_id", type=int, required=True, help="The issue to reply on.")
@click.option("--rep", "rep_email", required=True, help="The rep's email address.")
@click.option("--note", is_flag=True, help="An internal note instead of a reply to the customer.")
@click.option("--body-file", type=click.File("r"), default="-", help="The text (default: stdin).")
def reply(settings: Settings, issue_id: int, rep_email: str, note: bool, body_file) -> None:
    """Reply to an issue's customer (or add a note) as a rep, through the same path as mail."""
    app = build(settings, secret_required=True)
    signer = app.signer
    if signer is None:  # build() raises first; this keeps the promise visible here
        raise ConfigError(f"security.secret_env: {settings.security.secret_env} must hold the signing secret")
    with app.sessions() as session:
        issue = session.get(Issue, issue_id)
        rep = session.scalar(select(Rep).where(func.lower(Rep.email) == rep_email.lower(), Rep.active.is_(True)))
        if issue is None or rep is None:
            raise click.ClickException(f"no issue #{issue_id}" if issue is None else f"no rep {rep_email}")
        mailbox = settings.mailbox_named(issue.mailbox)
        to = signer.address(mailbox.address, issue.id, rep.id, "note" if note else "reply")
        subject = f"Re: {issue.subject} {subject_tag(settings.threading.tag_prefix, issue.id)}"
        raw = _rep_mail(rep, to, subject, body_file.read())
    accepted = accept(app.sessions, Incoming(raw, mailbox.name, "cli", envelope_to=(to,)))
    (outcome,) = app.pipeline.process([accepted.raw_id])
    if outcome.state != "done" or outcome.stored is None:
        click.echo(f"maild: quarantined at {outcome.stage}: {outcome.error}", err=True)
        sys.exit(1)
    click.echo(f"recorded on issue #{outcome.stored.issue_id}")


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
