"""The pending life cycle: the customer's answer reopens, silence closes.

A customer's reply to a pending issue makes it open and notifies the
assignee. With a mailbox's `pending_close_days`, the scheduled closer (run
here with the time injected, never waited for) closes the pending issues the
customer never answered: the customer gets the shipped template, delivered
to a real SMTP sink and read back from there, the close is a note on the
issue, and the customer's reply to that mail reopens the issue.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from maild.app import build
from maild.config import load
from maild.daemon import build_daemon
from maild.desk.lifecycle import PendingCloser
from maild.models import utcnow
from conftest import SECRET, write_config
from test_outbound import outbound
from test_rep_commands import _mail, deliver, open_issue, outbox, rep_mail, show, state

MAILBOXES = (
    '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\npending_close_days = 7\n\n'
    '[[mailbox]]\nname = "billing"\naddress = "billing@acme.test"\ncategory = "billing"\n'
)


@pytest.fixture
def life_app(tmp_path, db_url, sink, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    path = write_config(tmp_path / "maild.toml", db_url, extra=outbound(f"127.0.0.1:{sink.port}"),
                        mailboxes=MAILBOXES)
    app = build(load(path))
    app.config_path = path
    yield app
    app.close()


def test_a_customers_reply_reopens_a_pending_issue_and_the_assignee_hears_of_it(app, cli):
    n = open_issue(app)
    rep_mail(app, n, "#take\n#pending\nWhat is the serial number?", rep="bob@acme.test")
    assert state(cli, n)["status"] == "pending"
    before = outbox(app)
    deliver(app, _mail("Pat Customer <pat@example.com>", "support@acme.test", f"Re: [#{n}] Printer on fire",
                       "The serial number is 12345."))
    assert state(cli, n)["status"] == "open"
    assert [i["id"] for i in cli.json("issues", "list", "--status", "open")] == [n]
    (told,) = [m for m in outbox(app)[len(before):] if m["kind"] == "notification"]
    assert told["to"] == ["bob@acme.test"] and "12345" in told["body"] and "open" in told["body"]


def test_a_reps_note_on_a_pending_issue_leaves_it_pending(app, cli):
    n = open_issue(app)
    rep_mail(app, n, "#pending\nPlease send the serial number.")
    rep_mail(app, n, "#note\nCalled the warehouse.", rep="bob@acme.test")
    assert state(cli, n)["status"] == "pending"


def test_pending_issues_close_after_their_days_and_the_customer_can_reopen(life_app, sink, cli):
    waiting = open_issue(life_app)
    rep_mail(life_app, waiting, "#pending\nCould you send a photo?")
    recent = open_issue(life_app, frm="Sam <sam@example.org>", subject="Invoice twice")
    life_app.sender.run_once()  # what the customer and reps were sent so far
    closer = PendingCloser(life_app.settings, life_app.sessions, life_app.templates)
    assert closer.run(now=utcnow() + timedelta(days=6)) == 0  # not yet
    assert closer.run(now=utcnow() + timedelta(days=7, hours=1)) == 1  # the open issue never closes
    assert state(cli, waiting)["status"] == "closed" and state(cli, recent)["status"] == "open"
    notes = [i for i in show(cli, waiting)["interactions"] if i["kind"] == "note"]
    assert "Closed automatically: pending for 7 days" in notes[-1]["new_text"]
    assert closer.run(now=utcnow() + timedelta(days=8)) == 0  # nothing closed twice
    life_app.sender.run_once()
    closing = [m for env, m in sink.messages() if env["to"] == ["pat@example.com"] and "7 days" in m.get_content()]
    assert len(closing) == 1
    mail = closing[0]
    assert mail["From"] == "support@acme.test" and f"[#{waiting}]" in mail["Subject"]
    assert "just reply to this" in mail.get_content() and mail["Auto-Submitted"] == "auto-replied"
    reply = deliver(life_app, _mail("Pat Customer <pat@example.com>", "support@acme.test",
                                    "Re: " + mail["Subject"], "Here is the photo.", in_reply_to=mail["Message-ID"]))
    assert reply.issue_id == waiting and state(cli, waiting)["status"] == "open"


def test_mailboxes_without_pending_close_days_never_close(app, cli):
    n = open_issue(app)
    rep_mail(app, n, "#pending\nWaiting for you.")
    assert PendingCloser(app.settings, app.sessions, app.templates).run(now=utcnow() + timedelta(days=3650)) == 0
    assert state(cli, n)["status"] == "pending"


def test_the_daemon_schedules_the_closer_only_where_configured(life_app, app):
    assert "pending-close" in [j.name for j in build_daemon(life_app.settings, app=life_app).jobs]
    assert "pending-close" not in [j.name for j in build_daemon(app.settings, app=app).jobs]
