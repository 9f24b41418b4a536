"""Helpers for the customer record tests: mail to ingest, user lists to import, the CLI."""

from __future__ import annotations

import itertools
import json
from email.message import EmailMessage
from pathlib import Path

from maild.ingest.intake import Incoming, accept

_ids = itertools.count(1)


def mail(frm: str, subject: str = "Help", body: str = "Please help.", reply_to: str | None = None,
         msgid: str | None = None, in_reply_to: str | None = None, headers: dict | None = None) -> bytes:
    m = EmailMessage()
    m["From"] = frm
    m["To"] = "support@acme.test"
    if reply_to:
        m["Reply-To"] = reply_to
    m["Subject"] = subject
    m["Message-ID"] = msgid or f"<cust{next(_ids)}@example.org>"
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(body)
    return m.as_bytes()


def ingest(app, raw: bytes):
    """Store and process one message; the pipeline's Stored record."""
    accepted = accept(app.sessions, Incoming(raw, "support", "test"))
    (outcome,) = app.pipeline.process([accepted.raw_id])
    assert outcome.state == "done", outcome.error
    return outcome.stored


CSV_HEADER = "user_id,emails,name,postal_code,phone,tags,birthday"


def write_users_csv(path: Path, *rows: str, header: str = CSV_HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def write_users_json(path: Path, users: list) -> Path:
    path.write_text(json.dumps(users), encoding="utf-8")
    return path


def record(cli, customer_id: int) -> dict:
    """`maild customers show ID --json`."""
    return cli.json("customers", "show", str(customer_id))


def live_ids(cli) -> list[int]:
    """The ids `maild customers list` shows (never merged records)."""
    return [c["id"] for c in cli.json("customers", "list")]


def fails(cli, *args: str) -> str:
    """Run a command that must be refused (exit 1); its message."""
    result = cli(*args)
    assert result.exit_code == 1, result.output
    return result.output
