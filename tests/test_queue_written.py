"""Automatic mail queued as plain SQL (the notifier's path): every row it must leave, on both databases.

Mail to the customer is recorded as an outbound interaction on its issue, with
the issue's action and the outbox row that sends it (on PostgreSQL one
statement; with files, or on SQLite, one insert each), and the automatic-mail
rule counts it at once. A notice to a rep is an outbox row only.
"""

from __future__ import annotations

import email

import pytest
from sqlalchemy import select

from maild.app import build
from maild.config import load
from maild.models import Action, Attachment, Blob, Interaction, Issue, OutboxMessage
from maild.outbound.compose import OutAttachment, Outgoing
from maild.outbound.outbox import OutboxPolicy, auto_allowed, queue_written
from conftest import SECRET, write_config
from test_pipeline import ingest, mail


@pytest.fixture
def app(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    a = build(load(write_config(tmp_path / "maild.toml", db_url, extra="[outbound]\nmax_auto_per_recipient = 3\n")))
    yield a
    a.close()


def _to_customer(issue_id: int, files: tuple[OutAttachment, ...] = ()) -> Outgoing:
    return Outgoing(kind="acknowledgement", mailbox="support", to=("pat@example.com",), subject="We have it [#1]",
                    body="Thanks, we are on it.\n", issue_id=issue_id, in_reply_to="c1@example.com",
                    references=("c1@example.com",), to_customer=True, attachments=files)


@pytest.mark.parametrize("with_files", [False, True], ids=["plain", "with-files"])
def test_mail_to_the_customer_is_recorded_on_its_issue_and_queued(app, with_files):
    ingest(app, mail(msgid="<c1@example.com>"))
    policy = OutboxPolicy.from_settings(app.settings)
    data = b"%PDF-1.4 the invoice"
    files = (OutAttachment("invoice.pdf", "application/pdf", data, "ab" * 32),) if with_files else ()
    with app.sessions() as s, s.begin():
        issue = s.scalars(select(Issue)).one()
        if files:
            s.add(Blob(sha256="ab" * 32, size=len(data), data=data))
            s.flush()
        queued = queue_written(s, _to_customer(issue.id, files), policy)
        customer_id = issue.customer_id
    with app.sessions() as s:
        row = s.get(OutboxMessage, queued.id)
        assert row is not None and row.status == "queued" and row.kind == "acknowledgement"
        assert row.message_id == queued.message_id and row.interaction_id == queued.interaction_id
        assert row.issue_id == issue.id and row.recipients == ["pat@example.com"] and row.to_customer and row.auto
        sent = email.message_from_bytes(row.data)
        assert sent["Message-ID"] == f"<{queued.message_id}>" and sent["In-Reply-To"] == "<c1@example.com>"
        recorded = s.get(Interaction, queued.interaction_id)
        assert recorded is not None and recorded.direction == "outbound" and recorded.message_id == queued.message_id
        assert recorded.customer_id == customer_id and recorded.new_text == "Thanks, we are on it.\n"
        assert s.scalars(select(Action.issue_id).where(Action.interaction_id == recorded.id)).all() == [issue.id]
        names = s.scalars(select(Attachment.filename).where(Attachment.interaction_id == recorded.id)).all()
        assert names == (["invoice.pdf"] if with_files else [])


def test_a_notice_to_a_rep_is_an_outbox_row_only(app):
    ingest(app, mail(msgid="<c1@example.com>"))
    policy = OutboxPolicy.from_settings(app.settings)
    with app.sessions() as s, s.begin():
        issue_id = s.scalars(select(Issue.id)).one()
        before = s.scalars(select(Interaction.id)).all()
        queued = queue_written(s, Outgoing(kind="notification", mailbox="support", to=("alice@acme.test",),
                                           subject="New issue [#1]", body="Pat wrote.\n", issue_id=issue_id,
                                           rep_id=None), policy)
        assert queued.interaction_id is None
        assert s.scalars(select(Interaction.id)).all() == before
        row = s.get(OutboxMessage, queued.id)
        assert row is not None and row.interaction_id is None and not row.to_customer


def test_what_is_queued_counts_against_the_days_automatic_mail_at_once(app):
    ingest(app, mail(msgid="<c1@example.com>"))  # acknowledged: one automatic mail to pat today
    policy = OutboxPolicy.from_settings(app.settings)
    with app.sessions() as s, s.begin():
        issue_id = s.scalars(select(Issue.id)).one()
        assert auto_allowed(s, policy, "pat@example.com")
        queue_written(s, _to_customer(issue_id), policy)
        assert auto_allowed(s, policy, "Pat@Example.com")  # two of three
        queue_written(s, _to_customer(issue_id), policy)
        assert not auto_allowed(s, policy, "pat@example.com")  # the third, in the same transaction
