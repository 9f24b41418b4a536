"""Every rep command of the README's list, applied to an issue by a real rep mail.

Each test delivers a mail From a rep to the signed reply address of their
notification (the token names the issue and that rep) through the intake and
the pipeline, then reads the issue back as `maild issues show --json` prints
it; one case goes over SMTP to `maild run`. A mail with an invalid command
changes nothing and the rep finds the reason in the outbox.
"""

from __future__ import annotations

import email
import email.policy
import json
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from itertools import count

import pytest
from sqlalchemy import select

from maild.app import build
from maild.config import load
from maild.ingest.intake import Incoming, accept
from maild.ingest.stages.records import Stored
from maild.models import OutboxMessage, Rep
from maild.tokens import TokenSigner
from conftest import SECRET, run_maild, write_config
from daemon_helpers import Maild, free_port, smtp_client

_ids = count(1)
ISSUE_FIELDS = ("status", "closed", "priority", "category", "assignee", "tags", "cc")


def _mail(frm: str, to: str, subject: str, body: str, in_reply_to: str | None = None) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, to, subject
    m["Date"] = format_datetime(datetime(2026, 11, 2, 9, 30, tzinfo=UTC))
    m["Message-ID"] = f"<m{next(_ids)}.{time.monotonic_ns()}@example.com>"
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
    m.set_content(body)
    return m.as_bytes()


def deliver(app, raw: bytes, envelope_to: tuple[str, ...] = ()) -> Stored:
    accepted = accept(app.sessions, Incoming(raw, "support", "test", envelope_to=envelope_to))
    assert not accepted.duplicate
    (outcome,) = app.pipeline.process([accepted.raw_id])
    assert outcome.state == "done" and outcome.stored is not None, outcome.error
    return outcome.stored


def open_issue(app, frm: str = "Pat Customer <pat@example.com>", subject: str = "Printer on fire") -> int:
    stored = deliver(app, _mail(frm, "support@acme.test", subject, "My printer is on fire."))
    assert stored.new_issue and stored.issue_id is not None
    return stored.issue_id


def rep_id(app, rep_email: str) -> int:
    with app.sessions() as s:
        return s.scalar(select(Rep.id).where(Rep.email == rep_email))


def rep_mail(app, issue_id: int, text: str, rep: str = "alice@acme.test", purpose: str = "reply") -> Stored:
    """The rep answers their notification: From the rep, to the signed address, quoting it."""
    address = app.signer.address("support@acme.test", issue_id, rep_id(app, rep), purpose)
    body = f"{text}\n\nOn Mon, 2 Nov 2026 at 09:30, ACME Support <support@acme.test> wrote:\n> My printer is on fire.\n"
    stored = deliver(app, _mail(rep, address, f"Re: [#{issue_id}] Printer on fire", body), envelope_to=(address,))
    assert (stored.issue_id, stored.rep_id) == (issue_id, rep_id(app, rep)), "not taken as the rep's mail"
    return stored


def show(cli, issue_id: int) -> dict:
    return cli.json("issues", "show", str(issue_id))


def state(cli, issue_id: int) -> dict:
    shown = show(cli, issue_id)
    return {k: shown[k] for k in ISSUE_FIELDS}


def outbox(app) -> list[dict]:
    """Queued mail, oldest first: kind, recipients, status, subject and body."""
    with app.sessions() as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        out = []
        for r in rows:
            m = email.message_from_bytes(r.data, policy=email.policy.default)
            out.append({"kind": r.kind, "to": list(r.recipients), "status": r.status,
                        "subject": str(m["Subject"]), "body": m.get_body(("plain",)).get_content()})
        return out


def new_outbox(app, before: list[dict]) -> list[dict]:
    return outbox(app)[len(before):]


# --- status -----------------------------------------------------------------------


def test_close_then_reopen(app, cli):
    n = open_issue(app)
    before = outbox(app)
    rep_mail(app, n, "#close")
    closed = state(cli, n)
    assert closed["status"] == "closed" and closed["closed"] is not None
    assert new_outbox(app, before) == []  # commands only: nothing is sent
    rep_mail(app, n, "#reopen")
    reopened = state(cli, n)
    assert reopened["status"] == "open" and reopened["closed"] is None
    assert cli.json("issues", "list", "--status", "open")[0]["id"] == n


def test_pending_waits_for_the_customer(app, cli):
    n = open_issue(app)
    rep_mail(app, n, "#pending\nCould you send us the printer's serial number?")
    assert state(cli, n)["status"] == "pending"
    assert [i["id"] for i in cli.json("issues", "list", "--status", "pending")] == [n]
    (reply,) = [m for m in outbox(app) if m["kind"] == "reply"]
    assert reply["to"][0] == "pat@example.com" and "serial number" in reply["body"]
    assert "#pending" not in reply["body"]


# --- who works on it ---------------------------------------------------------------


def test_take_assigns_the_issue_to_the_rep_who_wrote(app, cli):
    n = open_issue(app)
    assert state(cli, n)["assignee"] is None
    rep_mail(app, n, "#take", rep="bob@acme.test")
    assert state(cli, n)["assignee"] == "bob@acme.test"


def test_assign_by_name_or_email_and_the_assignee_alone_hears_of_replies(app, cli):
    n = open_issue(app)
    rep_mail(app, n, "#assign Bob")
    assert state(cli, n)["assignee"] == "bob@acme.test"
    before = outbox(app)
    deliver(app, _mail("Pat Customer <pat@example.com>", "support@acme.test", f"Re: [#{n}] Printer on fire",
                       "It is smoking now."))
    notified = [m["to"] for m in new_outbox(app, before) if m["kind"] == "notification"]
    assert notified == [["bob@acme.test"]]
    rep_mail(app, n, "#assign alice@acme.test", rep="bob@acme.test")
    assert state(cli, n)["assignee"] == "alice@acme.test"


# --- how it is filed ----------------------------------------------------------------


@pytest.mark.parametrize(("line", "priority"), [("#priority low", "low"), ("#priority URGENT", "urgent")])
def test_priority(app, cli, line, priority):
    n = open_issue(app)
    assert state(cli, n)["priority"] == "normal"
    rep_mail(app, n, line)
    assert state(cli, n)["priority"] == priority


def test_category_moves_the_issue(app, cli):
    n = open_issue(app)
    assert state(cli, n)["category"] == "uncategorized"
    rep_mail(app, n, "#category Billing")
    assert state(cli, n)["category"] == "billing"
    assert [i["id"] for i in cli.json("issues", "list", "--category", "billing")] == [n]


def test_tag_then_untag(app, cli):
    n = open_issue(app)
    rep_mail(app, n, "#tag refund, vip\n#tag late")
    assert state(cli, n)["tags"] == ["refund", "vip", "late"]
    rep_mail(app, n, "#untag VIP late")
    assert state(cli, n)["tags"] == ["refund"]


def test_followup_is_recorded_on_the_reps_interaction(app, cli):
    n = open_issue(app)
    stored = rep_mail(app, n, "#followup call back Friday to confirm the refund")
    (mine,) = [i for i in show(cli, n)["interactions"] if i["id"] == stored.interaction_id]
    assert mine["follow_up_required"] == ["call back Friday to confirm the refund"]


def test_cc_add_keeps_someone_in_copy_and_remove_drops_them(app, cli):
    n = open_issue(app)
    rep_mail(app, n, "#cc add Boss <boss@example.com>")
    assert state(cli, n)["cc"] == ["boss@example.com"]
    before = outbox(app)
    rep_mail(app, n, "The technician comes tomorrow.")
    (reply,) = [m for m in new_outbox(app, before) if m["kind"] == "reply"]
    assert reply["to"] == ["pat@example.com", "boss@example.com"]
    rep_mail(app, n, "#cc remove boss@example.com")
    assert state(cli, n)["cc"] == []


def test_link_puts_the_mail_on_the_other_issue_too(app, cli):
    n = open_issue(app)
    other = open_issue(app, frm="Sam <sam@example.org>", subject="Invoice twice")
    stored = rep_mail(app, n, f"#link {other}\nBoth of you wrote about the same outage.")
    (mine,) = [i for i in show(cli, other)["interactions"] if i["from"] == "alice@acme.test"]
    assert mine["id"] == stored.interaction_id and "same outage" in mine["new_text"]
    assert stored.interaction_id in [i["id"] for i in show(cli, n)["interactions"]]
    assert state(cli, other)["status"] == "open"  # linking changes nothing else there


# --- notes and held replies -----------------------------------------------------------


def test_note_is_internal_and_the_other_reps_are_told(app, cli):
    n = open_issue(app)
    before = outbox(app)
    stored = rep_mail(app, n, "#note\nCustomer is on the old firmware.")
    (mine,) = [i for i in show(cli, n)["interactions"] if i["id"] == stored.interaction_id]
    assert mine["kind"] == "note" and mine["new_text"] == "Customer is on the old firmware."
    sent = new_outbox(app, before)
    assert [m["to"] for m in sent] == [["bob@acme.test"]] and "old firmware" in sent[0]["body"]


def test_send_releases_a_reply_held_by_the_spell_check(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    config = write_config(tmp_path / "hold.toml", db_url, extra='[spelling]\nmode = "hold"\n')
    app = build(load(config))
    try:
        n = open_issue(app)
        rep_mail(app, n, "You will recieve a replacment tomorrow.")
        replies = [m for m in outbox(app) if m["kind"] == "reply"]
        assert [m["status"] for m in replies] == ["held"]
        notice = [m for m in outbox(app) if m["kind"] == "rep-notice"][-1]
        assert notice["to"] == ["alice@acme.test"] and "recieve" in notice["body"]
        rep_mail(app, n, "#send")
        replies = [m for m in outbox(app) if m["kind"] == "reply"]
        assert [m["status"] for m in replies] == ["queued"] and "recieve a replacment" in replies[0]["body"]
    finally:
        app.close()


# --- invalid commands ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("#close\n#priority asap\nDone.", "#priority: expected low, normal, high or urgent, got 'asap'"),
        ("#tag refund\n#frobnicate\nDone.", "unknown command #frobnicate"),
        ("#close\n#assign Nobody\nDone.", "#assign: no rep called 'Nobody' (reps: Alice, Bob)"),
        ("#tag refund\n#category nosuch\nDone.", "#category: no category 'nosuch'"),
        ("#pending\n#link 9999\nDone.", "#link: no issue #9999"),
        ("#cc add boss@example.com\n#take please\nDone.", "#take: takes no arguments, got 'please'"),
    ],
)
def test_invalid_command_changes_nothing_and_the_rep_is_told_why(app, cli, text, reason):
    n = open_issue(app)
    unchanged = state(cli, n)
    before = outbox(app)
    rep_mail(app, n, text)
    assert state(cli, n) == unchanged
    (notice,) = new_outbox(app, before)
    assert notice["kind"] == "rep-notice" and notice["to"] == ["alice@acme.test"]
    assert reason in notice["body"] and f"[#{n}]" in notice["subject"]


# --- end to end --------------------------------------------------------------------


@pytest.mark.slow
def test_commands_over_smtp_to_the_daemon(tmp_path, db_url, db):
    """A rep's commands sent over SMTP to `maild run`, read back with `maild issues show --json`."""
    extra = (f'[smtp]\nlisten = "127.0.0.1:{free_port()}"\n\n[daemon]\ndrain_interval = 0.5\n\n'
             # a relay nobody listens on: what maild queues stays in the outbox, to be read
             f'[outbound]\nrelay = "127.0.0.1:{free_port()}"\nsend_interval = 3600\n')
    config = write_config(tmp_path / "maild.toml", db_url, extra=extra)
    maild = Maild(config).start()
    try:
        with smtp_client(config) as s:
            s.sendmail("pat@example.com", ["support@acme.test"],
                       _mail("Pat Customer <pat@example.com>", "support@acme.test", "Refund?", "Where is my refund?"))
        db.wait_processed(1)
        (row,) = json.loads(run_maild("issues", "list", "--json", "-c", str(config)).stdout)
        n = row["id"]
        alice = db.scalar(select(Rep.id).where(Rep.email == "alice@acme.test"))
        address = TokenSigner(SECRET.encode()).address("support@acme.test", n, alice, "reply")
        commands = "#assign Bob\n#category billing\n#tag refund\n#priority urgent\n#pending"
        with smtp_client(config) as s:
            s.sendmail("alice@acme.test", [address], _mail("Alice <alice@acme.test>", address, "Re: Refund?", commands))
        db.wait_processed(2)
        shown = json.loads(run_maild("issues", "show", str(n), "--json", "-c", str(config)).stdout)
        assert (shown["assignee"], shown["category"], shown["tags"], shown["priority"], shown["status"]) == (
            "bob@acme.test", "billing", ["refund"], "urgent", "pending")
        outbox_rows = json.loads(run_maild("outbox", "list", "--json", "-c", str(config)).stdout)
        assert "reply" not in {r["kind"] for r in outbox_rows}  # commands only: the customer gets nothing
    finally:
        assert maild.stop() == 0
