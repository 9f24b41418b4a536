"""Reminders before and an escalation after a missed first response: once each, whoever checks.

Issues are opened by real mail through the pipeline; time is injected
(`Reminders.check(now)`, `maild sla check --now`). A restart is a fresh App
on the same database, a second process is `maild sla check` run as one; both
find the notices sent and send nothing again.
"""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from maild.app import build
from maild.config import load
from maild.models import Issue, OutboxMessage, Rep, TurnaroundNotice
from test_rep_commands import _mail, deliver
from conftest import SECRET, run_maild, write_config

OPENED = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday; 24x7, 24 hours to answer (the default)
CONFIG = """
[sla]
escalate_to = ["lead@acme.test"]
"""


@pytest.fixture
def config(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    return write_config(tmp_path / "maild.toml", db_url, extra=CONFIG)


@pytest.fixture
def app(config):
    a = build(load(config))
    yield a
    a.close()


def open_issue(app, subject: str = "Printer on fire", body: str = "My printer is on fire.") -> int:
    stored = deliver(app, _mail("Pat Customer <pat@example.com>", "support@acme.test", subject, body))
    with app.sessions() as s, s.begin():
        s.execute(update(Issue).where(Issue.id == stored.issue_id).values(opened_at=OPENED))
    return stored.issue_id


def rep_mail(app, issue_id: int, text: str, rep: str = "alice@acme.test") -> None:
    with app.sessions() as s:
        rid = s.scalar(select(Rep.id).where(Rep.email == rep))
    address = app.signer.address("support@acme.test", issue_id, rid, "reply")
    deliver(app, _mail(rep, address, f"Re: [#{issue_id}] Printer on fire", text), envelope_to=(address,))


def sla_mail(app, issue_id: int) -> list[tuple[str, str, email.message.EmailMessage]]:
    """(kind, recipient, parsed mail) of every reminder and escalation queued for the issue."""
    with app.sessions() as s:
        rows = s.scalars(select(OutboxMessage).where(OutboxMessage.issue_id == issue_id,
                                                     OutboxMessage.kind.like("sla-%")).order_by(OutboxMessage.id))
        return [(r.kind, r.recipients[0], email.message_from_bytes(r.data, policy=email.policy.default))
                for r in rows]


def at(hours: float) -> datetime:
    return OPENED + timedelta(hours=hours)


def test_reminder_then_escalation_once_each_across_a_restart_and_a_second_process(app, config, tmp_path):
    issue = open_issue(app)
    rep_mail(app, issue, "#take")  # Alice is the assignee: she alone is reminded
    assert app.reminders.check(at(17)) == {}  # 71% of 24 hours
    assert app.reminders.check(at(18.5)) == {"reminder": 1}
    assert app.reminders.check(at(19)) == {}

    restarted = build(load(config))  # a restart: a fresh App on the same database
    try:
        assert restarted.reminders.check(at(20)) == {}
        assert restarted.reminders.check(at(24.5)) == {"escalation": 1}
    finally:
        restarted.close()
    # A second process, by hand, later still: everything was sent already.
    done = run_maild("sla", "check", "--now", at(30).isoformat(), "-c", str(config))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "0 reminder(s), 0 escalation(s) queued"
    assert app.reminders.check(at(48)) == {}

    sent = sla_mail(app, issue)
    assert [(k, to) for k, to, _ in sent] == [("sla-reminder", "alice@acme.test"), ("sla-escalation", "lead@acme.test")]
    reminder, escalation = sent[0][2], sent[1][2]
    text = reminder.get_content()
    # The issue's summary and the addresses to answer it from the mail client.
    assert f"#{issue}" in reminder["Subject"] and "Printer on fire" in reminder["Subject"]
    assert "pat@example.com" in text and "My printer is on fire." in text and "18.5 of 24.0 business hours" in text
    reply_to = reminder["Reply-To"].addresses[0].addr_spec
    assert reply_to.startswith("support+") and reply_to in text
    assert f"+i{issue}-" in text.split("internal note")[0].rsplit("Write to", 1)[1]  # the note address
    assert "missed its first response target" in escalation.get_content()
    with app.sessions() as s:
        row = s.get_one(Issue, issue)
        assert row.breached_at is not None
        assert s.scalar(select(func.count()).select_from(TurnaroundNotice).where(
            TurnaroundNotice.issue_id == issue, TurnaroundNotice.kind == "escalation")) == 1


def test_an_answer_in_time_stops_the_clock(app):
    issue = open_issue(app)
    assert app.reminders.check(at(20)) == {"reminder": 1}
    # Unassigned, and neither its category nor its mailbox names reps: every rep is reminded.
    assert [to for _, to, _ in sla_mail(app, issue)] == ["alice@acme.test", "bob@acme.test"]
    rep_mail(app, issue, "Hello Pat, a technician is on the way.")
    assert app.reminders.check(at(30)) == {}  # answered: no escalation
    with app.sessions() as s:
        assert s.get_one(Issue, issue).breached_at is None


def test_two_checkers_at_once_send_each_notice_once(app, config):
    issues = [open_issue(app, f"Case {n}") for n in range(5)]
    other = build(load(config))  # a second daemon on the same database
    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda a: a.reminders.check(at(25)), [app, other]))
    finally:
        other.close()
    assert sum(r["escalation"] for r in results) == 5  # one escalation per issue, between them
    for issue in issues:
        assert [(k, to) for k, to, _ in sla_mail(app, issue)] == [("sla-escalation", "lead@acme.test")]


def test_sla_check_rejects_a_bad_time(config):
    bad = run_maild("sla", "check", "--now", "next tuesday", "-c", str(config))
    assert bad.returncode == 2 and "not an ISO 8601 time" in bad.stderr.decode()
