"""Reps work from their own mail client: replies relayed, notes, commands,
canned responses, spell check; delivery through a real SMTP sink process."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import format_datetime
from datetime import datetime, UTC

import pytest
from sqlalchemy import select

from maild.app import build
from maild.config import load
from maild.models import Interaction, Issue
from conftest import SECRET, run_maild, write_config
from test_outbound import SinkProcess, free_port, rows
from test_pipeline import ingest, mail

CANNED = '''
[[canned]]
name = "refund"
description = "Refund timing"
body = "Your refund of issue {{ issue_id }} is on its way, {{ customer_name }}."

[[canned]]
name = "thanks"
body = "Thank you for your patience."
'''


@pytest.fixture
def desk(tmp_path, db_url, monkeypatch):
    """An app whose relay is a sink process, and a helper to run the sender."""
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    sink = SinkProcess(tmp_path / "sink", free_port())
    sink.folder.mkdir()
    sink.start()

    def make(spelling: str = "warn"):
        extra = (f'[outbound]\nrelay = "127.0.0.1:{sink.port}"\n\n[spelling]\nmode = "{spelling}"\n'
                 f'words = ["ACME"]\n{CANNED}')
        path = write_config(tmp_path / f"maild-{spelling}.toml", db_url, extra=extra)
        app = build(load(path))
        app.sink, app.config_path = sink, path
        apps.append(app)
        return app

    apps: list = []
    yield make
    for a in apps:
        a.close()
    sink.stop()


def deliver(app) -> list:
    """Send what is queued; the mails that reached the sink, newest last."""
    before = len(app.sink.messages())
    app.sender.run_once()
    return [m for _, m in app.sink.messages()[before:]]


def start_issue(app, body="My printer is on fire. Pat"):
    o = ingest(app, mail(frm="Pat Customer <pat@example.com>", msgid="<cust1@example.com>", body=body,
                         cc="boss@example.com"))
    sent = deliver(app)
    note = next(m for m in sent if m["To"] == "alice@acme.test")
    return o.stored.issue_id, note


def client_reply(note, text: str, frm="Alice <alice@acme.test>", outlook=False, headers=None) -> tuple[bytes, str]:
    """A reply as a mail client writes it: quoting the notification below."""
    to = note["Reply-To"].addresses[0].addr_spec
    m = EmailMessage()
    m["From"] = frm
    m["To"] = str(note["Reply-To"])
    m["Subject"] = ("RE: " if outlook else "Re: ") + note["Subject"]
    m["Date"] = format_datetime(datetime(2026, 11, 3, 10, 0, tzinfo=UTC))
    m["Message-ID"] = f"<r{abs(hash(text))}@acme.test>"
    m["In-Reply-To"] = note["Message-ID"]
    if not outlook:
        m["References"] = note["Message-ID"]
    for k, v in (headers or {}).items():
        m[k] = v
    quoted = "\n".join("> " + line for line in note.get_content().splitlines())
    if outlook:
        body = (f"{text}\n\n-----Original Message-----\nFrom: ACME Support <support@acme.test>\n"
                f"Sent: Monday, November 2, 2026 9:30 AM\nTo: Alice\nSubject: {note['Subject']}\n\n{note.get_content()}")
    else:
        body = f"{text}\n\nOn Mon, 2 Nov 2026 at 09:30, ACME Support <support@acme.test> wrote:\n{quoted}\n"
    m.set_content(body)
    return m.as_bytes(), to


def rep_sends(app, note, text, **kw):
    raw, to = client_reply(note, text, **kw)
    return ingest(app, raw, envelope_to=[to])


def test_rep_reply_reaches_customer_threaded_from_the_support_address(desk):
    app = desk()
    n, note = start_issue(app)
    o = rep_sends(app, note, "We are sending a technician today.\n\nAlice")
    assert o.stored.issue_id == n and o.stored.thread_reason == "token"
    (out,) = deliver(app)
    assert out["To"] == "pat@example.com" and out["Cc"] == "boss@example.com"
    assert out["From"] == "support@acme.test" and "alice" not in str(out).lower().split("\n\n")[0]
    assert out["In-Reply-To"] == "<cust1@example.com>" and f"[#{n}]" in out["Subject"]
    body = out.get_content()
    assert "technician today" in body and "wrote:" not in body and "printer is on fire" not in body
    with app.sessions() as s:
        kinds = [(i.direction, i.rep_id is not None) for i in s.scalars(
            select(Interaction).where(Interaction.subject == out["Subject"]))]
    assert ("outbound", True) in kinds


def test_outlook_style_reply_is_relayed_without_the_original(desk):
    app = desk()
    _n, note = start_issue(app)
    rep_sends(app, note, "Fixed on our side.", outlook=True)
    (out,) = deliver(app)
    assert out.get_content().strip().startswith("Fixed on our side.")
    assert "Original Message" not in out.get_content()


def test_forged_rep_from_is_customer_mail_and_its_commands_are_text(desk, caplog):
    app = desk()
    n, note = start_issue(app)
    # Bob's From on Alice's reply address: not Bob's token, so not a rep's mail.
    o = rep_sends(app, note, "#close\nRefund granted!", frm="Bob <bob@acme.test>")
    assert o.stored.rep_id is None and o.stored.customer_id is not None
    with app.sessions() as s:
        assert s.get(Issue, n).status == "open"
    sent = deliver(app)
    assert all(m["To"] != "pat@example.com" for m in sent)
    assert "without that rep's reply token" in caplog.text


@pytest.mark.slow
def test_commands_only_mail_changes_the_issue_and_sends_nothing(desk):
    app = desk()
    n, note = start_issue(app)
    rep_sends(app, note, "#priority high\n#tag vip\n#tag printer\n#take\n#followup call back Friday\n"
                         "#cc add it@example.com\n#close")
    with app.sessions() as s:
        issue = s.get(Issue, n)
        assert (issue.status, issue.priority, issue.tags) == ("closed", "high", ["vip", "printer"])
        assert issue.assignee.email == "alice@acme.test" and "it@example.com" in issue.cc
    assert deliver(app) == []
    shown = run_maild("issues", "show", str(n), "--json", "-c", str(app.config_path))
    assert b"call back Friday" in shown.stdout


def test_invalid_command_tells_the_rep_and_sends_the_customer_nothing(desk):
    app = desk()
    n, note = start_issue(app)
    rep_sends(app, note, "#priority asap\n#assign Nobody\nPlease see attached.")
    sent = deliver(app)
    assert [m["To"] for m in sent] == ["alice@acme.test"]
    assert "asap" in sent[0].get_content()
    with app.sessions() as s:
        assert s.get(Issue, n).priority == "normal"


def test_several_canned_responses_in_one_reply(desk):
    app = desk()
    n, note = start_issue(app)
    rep_sends(app, note, "Hello Pat,\n\n#canned refund\n\nAlso: {{canned:thanks}}\n\nAlice")
    (out,) = deliver(app)
    body = out.get_content()
    assert f"Your refund of issue {n} is on its way, Pat Customer." in body
    assert "Also: Thank you for your patience." in body


def test_unknown_canned_response_sends_nothing_and_tells_the_rep(desk):
    app = desk()
    _n, note = start_issue(app)
    rep_sends(app, note, "#canned nosuch\nAlice")
    sent = deliver(app)
    assert [m["To"] for m in sent] == ["alice@acme.test"] and "nosuch" in sent[0].get_content()


def test_spelling_hold_then_send_releases_the_reply(desk):
    app = desk("hold")
    _n, note = start_issue(app)
    rep_sends(app, note, "You will recieve a replacment from ACME tomorrow.")
    (notice,) = deliver(app)
    assert notice["To"] == "alice@acme.test" and "recieve" in notice.get_content()
    assert [r.status for r in rows(app, kind="reply")] == ["held"]
    rep_sends(app, notice, "#send")
    (out,) = deliver(app)
    assert out["To"] == "pat@example.com" and "recieve a replacment" in out.get_content()


def test_spelling_hold_then_corrected_reply_replaces_it(desk):
    app = desk("hold")
    _n, note = start_issue(app)
    rep_sends(app, note, "You will recieve it tomorrow.")
    (notice,) = deliver(app)
    rep_sends(app, notice, "You will receive it tomorrow.")
    (out,) = deliver(app)
    assert "receive it tomorrow" in out.get_content()
    assert sorted(r.status for r in rows(app, kind="reply")) == ["discarded", "sent"]


def test_note_is_recorded_and_never_sent_to_the_customer(desk):
    app = desk()
    n, note = start_issue(app)
    raw, _ = client_reply(note, "Customer is on the old firmware.")
    note_addr = app.signer.address("support@acme.test", n, 1, "note")
    o = ingest(app, raw, envelope_to=[note_addr])
    assert o.stored.issue_id == n
    sent = deliver(app)
    assert [m["To"] for m in sent] == ["bob@acme.test"] and "old firmware" in sent[0].get_content()
    with app.sessions() as s:
        assert s.get(Interaction, o.stored.interaction_id).channel == "note"


def test_rep_out_of_office_to_a_notification_is_never_relayed(desk):
    app = desk()
    _n, note = start_issue(app)
    rep_sends(app, note, "I am away until Monday.", headers={"Auto-Submitted": "auto-replied"})
    assert deliver(app) == []


def test_reply_command_takes_the_same_path(desk, tmp_path):
    app = desk()
    n, _ = start_issue(app)
    body = tmp_path / "reply.txt"
    body.write_text("#priority urgent\nA courier is on the way.\n")
    r = run_maild("reply", "--issue", str(n), "--rep", "bob@acme.test", "--body-file", str(body),
                  "-c", str(app.config_path))
    assert r.returncode == 0, r.stderr
    (out,) = deliver(app)
    assert out["To"] == "pat@example.com" and "courier" in out.get_content()
    with app.sessions() as s:
        assert s.get(Issue, n).priority == "urgent"
