"""Outbound mail through a real SMTP sink process: acknowledgements, rep
notifications, automatic emails, retries, failures, crashes, loops, bounces."""

from __future__ import annotations

import email
import json
import mailbox
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from maild.app import build
from maild.config import load
from maild.daemon import build_daemon
from maild.models import Customer, CustomerAddress, Interaction, Issue, OutboxMessage, utcnow
from maild.outbound.compose import Outgoing, compose, one_line
from maild.outbound.outbox import enqueue
from conftest import REPO, SECRET, run_maild, write_config
from daemon_helpers import InProcess, daemon_config, message, smtp_client
from test_pipeline import ingest, mail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SinkProcess:
    """tests/smtp_sink.py in its own process; messages land as files."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port, self.proc = folder, port, None

    def start(self, *args: str) -> SinkProcess:
        ready = self.folder / "ready"
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "smtp_sink.py"), "--port", str(self.port),
                                      "--dir", str(self.folder), *args])
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert time.monotonic() < deadline and self.proc.poll() is None, "sink did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def messages(self) -> list[tuple[dict, email.message.EmailMessage]]:
        """Every message the sink answered 250 for; the sink renames <n>.eml into place after <n>.env."""
        out = []
        for path in sorted(self.folder.glob("[0-9]*.eml")):
            env = json.loads(path.with_suffix(".env").read_bytes())
            out.append((env, email.message_from_bytes(path.read_bytes(), policy=policy.default)))
        return out


@pytest.fixture
def relay(tmp_path):
    sink = SinkProcess(tmp_path / "sink", free_port())
    sink.folder.mkdir()
    yield sink
    sink.stop()


def outbound(relay: str, **keys) -> str:
    """The [outbound] table of the tests' configs, with these keys changed."""
    values = {"relay": relay, "retry_base": 1.0, "sending_timeout": 5.0, "max_auto_per_recipient": 3,
              "timeout": 10.0} | keys
    return "[outbound]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


@pytest.fixture
def out_app(tmp_path, db_url, relay, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    path = write_config(tmp_path / "maild.toml", db_url, extra=outbound(f"127.0.0.1:{relay.port}"))
    app = build(load(path))
    app.config_path = path
    yield app
    app.close()


def rows(app, **where) -> list[OutboxMessage]:
    with app.sessions() as s:
        q = select(OutboxMessage).order_by(OutboxMessage.id)
        for k, v in where.items():
            q = q.where(getattr(OutboxMessage, k) == v)
        return list(s.scalars(q))


def test_new_issue_acknowledges_customer_and_notifies_reps_all_recorded(out_app, relay):
    relay.start()
    first = ingest(out_app, mail(msgid="<c1@example.com>", subject="Printer on fire"))
    assert out_app.sender.run_once()["sent"] == 3
    got = {env["to"][0]: msg for env, msg in relay.messages()}
    assert set(got) == {"pat@example.com", "alice@acme.test", "bob@acme.test"}
    ack = got["pat@example.com"]
    n = first.stored.issue_id
    assert ack["From"] == "support@acme.test" and f"[#{n}]" in ack["Subject"]
    assert ack["In-Reply-To"] == "<c1@example.com>" and ack["Auto-Submitted"] == "auto-replied"
    note = got["alice@acme.test"]
    assert "It burns." in note.get_content() and note["Reply-To"].startswith("support+i")
    # The acknowledgement is an interaction on the issue; the notices to reps are outbox rows only.
    with out_app.sessions() as s:
        ids = set(s.scalars(select(Interaction.message_id).where(Interaction.direction != "inbound")))
    assert ids == {ack["Message-ID"].strip("<>")}
    assert {r.message_id for r in rows(out_app, kind="notification")} == {
        got[r]["Message-ID"].strip("<>") for r in ("alice@acme.test", "bob@acme.test")}
    # The customer's reply to the acknowledgement threads onto the same issue.
    reply = ingest(out_app, mail(subject="Re: " + ack["Subject"], body="Still burning", msgid="<c2@example.com>",
                                 in_reply_to=ack["Message-ID"]))
    assert reply.stored.issue_id == n and reply.stored.thread_reason == "in-reply-to"
    # A reply only notifies the reps; no second acknowledgement.
    assert {r.kind for r in rows(out_app, status="queued")} == {"notification"}


def test_relay_down_then_back_delivers_once(out_app, relay):
    ingest(out_app, mail(msgid="<d1@example.com>"))
    counts = out_app.sender.run_once()
    assert counts["queued"] == 3
    waiting = rows(out_app)
    assert all(r.attempts == 1 and r.last_error for r in waiting)
    relay.start()
    assert out_app.sender.run_once()["sent"] == 0  # not due yet: backing off
    later = utcnow() + timedelta(seconds=5)
    assert out_app.sender.run_once(now=later)["sent"] == 3
    assert out_app.sender.run_once(now=later + timedelta(hours=1)) == {}
    ids = [m["Message-ID"] for _, m in relay.messages()]
    assert len(ids) == 3 == len(set(ids))


def test_permanent_failure_is_recorded_and_the_rep_told(out_app, relay):
    relay.start("--reject", "pat@example.com")
    first = ingest(out_app, mail(msgid="<f1@example.com>"))
    out_app.sender.run_once()
    (ack,) = rows(out_app, kind="acknowledgement")
    words = "the relay refused pat@example.com: 550 5.1.1 mailbox unavailable"
    assert ack.status == "failed" and ack.last_error == words
    assert ack.results == {"pat@example.com": {"code": 550, "text": "5.1.1 mailbox unavailable"}}
    with out_app.sessions() as s:
        notes = s.scalars(select(Interaction).where(Interaction.channel == "note")).all()
    assert len(notes) == 1 and "could not be delivered" in notes[0].new_text and words in notes[0].new_text
    out_app.sender.run_once()
    told = [m for env, m in relay.messages() if m["Subject"].startswith("Undeliverable")]
    assert sorted(m["To"] for m in told) == ["alice@acme.test", "bob@acme.test"]  # once each
    text = told[0].get_content()
    assert f"#{first.stored.issue_id}" in text and words in text and "b'" not in text and "(550" not in text


def _lock(db_url: str):
    """Hold the outbox table so the sender blocks on marking a row sent."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        return conn
    import psycopg

    base, _, opts = db_url.partition("?")
    schema = opts.split("%3D")[1]
    conn = psycopg.connect(base)
    conn.execute(f"SET search_path TO {schema}")
    conn.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
    return conn


def test_crash_between_relay_ok_and_marking_sent_resends_at_most_once(out_app, relay, tmp_path, db_url):
    hold = tmp_path / "hold"
    hold.mkdir()
    relay.start("--hold", str(hold))
    ingest(out_app, mail(msgid="<x1@example.com>"))
    one = write_config(tmp_path / "one.toml", db_url, extra=outbound(f"127.0.0.1:{relay.port}", connections=1))
    sender = subprocess.Popen([sys.executable, "-m", "maild", "outbox", "send", "-c", str(one)],
                              cwd=REPO, env={**os.environ, "MAILD_SECRET": SECRET})
    deadline = time.monotonic() + 60
    while not (hold / "got").exists():
        assert time.monotonic() < deadline and sender.poll() is None
        time.sleep(0.05)
    lock = _lock(db_url)  # the relay has the first mail; now it answers 250 ...
    (hold / "release").touch()
    while len(relay.messages()) < 1:
        time.sleep(0.05)
    time.sleep(0.5)  # ... and the sender is stuck marking it sent: crash it there.
    sender.send_signal(signal.SIGKILL)
    sender.wait(10)
    lock.close()
    # One connection holds two rows (one being sent, the next ready): the held mail and the one
    # claimed beside it are in doubt, the third was never claimed.
    assert sorted(r.status for r in rows(out_app)) == ["queued", "sending", "sending"]
    before = len(relay.messages())
    # The queued row goes now; the held ones wait: the dead sender's lease (sending_timeout) is still valid.
    assert out_app.sender.run_once()["sent"] == 1
    assert len(relay.messages()) == before + 1
    assert out_app.sender.run_once(now=utcnow() + timedelta(seconds=6))["sent"] == 2
    assert sorted(r.resends for r in rows(out_app)) == [0, 1, 1]  # both leased rows count their one resend
    assert out_app.sender.run_once(now=utcnow() + timedelta(hours=1)) == {}
    copies: dict[str, list[bytes]] = {}
    for _, m in relay.messages():
        copies.setdefault(m["Message-ID"], []).append(m.as_bytes())
    # The row beside the held one may have reached the relay before the crash (its connection was free).
    assert len(copies) == 3 and len(relay.messages()) == before + 3 and before in (1, 2)
    first_id = relay.messages()[0][1]["Message-ID"]
    assert len(copies[first_id]) == 2  # the held mail: one resend ...
    assert all(len(c) <= 2 and len(set(c)) == 1 for c in copies.values())  # ... never more, always the same bytes


def test_two_auto_responders_facing_each_other_stop(out_app, relay):
    relay.start()
    for i in range(8):  # a responder that answers everything with a fresh mail, no headers
        ingest(out_app, mail(frm="bot@robots.test", subject=f"I got your mail {i}", msgid=f"<bot{i}@robots.test>"))
        out_app.sender.run_once()
    acks = [m for env, m in relay.messages() if env["to"] == ["bot@robots.test"]]
    assert len(acks) == 3  # outbound.max_auto_per_recipient in this test's config
    with out_app.sessions() as s:
        assert s.scalar(select(func.count(Issue.id))) == 8  # every mail still recorded


def test_our_mail_with_auto_submitted_is_never_answered(out_app, relay):
    relay.start()
    o = ingest(out_app, mail(subject="Automatic reply: away", headers={"Auto-Submitted": "auto-replied"},
                             msgid="<away@example.com>"))
    assert o.stored.outcome == "unmatched-auto"
    assert rows(out_app) == []


def _dsn(original_message_id: str, recipient: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.com\r\nTo: support@acme.test\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn1@mx.example.com>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: support@acme.test\r\nTo: {recipient}\r\nMessage-ID: <{original_message_id}>\r\n\r\n--B--\r\n"
    ).encode()


def test_bounce_attaches_to_its_issue_marks_address_and_sends_nothing(out_app, relay):
    relay.start()
    first = ingest(out_app, mail(msgid="<b1@example.com>"))
    (ack,) = rows(out_app, kind="acknowledgement")
    out_app.sender.run_once()
    before = len(rows(out_app))
    bounce = ingest(out_app, _dsn(ack.message_id, "pat@example.com"))
    assert bounce.stored.issue_id == first.stored.issue_id and not bounce.stored.new_issue
    # Nothing to the customer; the reps are told, once each, in words.
    told = rows(out_app)[before:]
    assert sorted(r.recipients[0] for r in told) == ["alice@acme.test", "bob@acme.test"]
    assert {r.kind for r in told} == {"failure"}
    with out_app.sessions() as s:
        notice = s.scalars(select(OutboxMessage.data).where(OutboxMessage.id == told[0].id)).one()
    assert b"pat@example.com bounced: status 5.1.1" in notice
    before = len(rows(out_app))
    # The address is failing now: a new mail from it is recorded and the reps
    # hear of it, but it gets no acknowledgement.
    ingest(out_app, mail(subject="Another thing", msgid="<b2@example.com>"))
    assert [r.kind for r in rows(out_app)[before:]] == ["notification", "notification"]


def test_notify_sends_automatic_mail_on_a_closed_issue_and_a_reply_reopens_it(out_app, relay):
    relay.start()
    r = run_maild("notify", "--to", "pat@example.com", "--template", "order_shipped", "--var", "order_id=A-17",
                  "--var", "tracking=ZX9", "-c", str(out_app.config_path))
    assert r.returncode == 0, r.stderr
    (row,) = rows(out_app)
    with out_app.sessions() as s:
        issue = s.get(Issue, row.issue_id)
        assert issue.status == "closed" and issue.closed_at is not None
    out_app.sender.run_once()
    (_env, sent), = relay.messages()
    assert "A-17" in sent["Subject"] and "ZX9" in sent.get_content()
    assert sent["Auto-Submitted"] == "auto-generated"
    reply = ingest(out_app, mail(subject="Re: " + sent["Subject"], body="Wrong colour!", msgid="<n2@example.com>",
                                 in_reply_to=sent["Message-ID"]))
    assert reply.stored.issue_id == row.issue_id and reply.stored.reopened


def test_notify_with_unknown_template_is_a_clear_error(out_app):
    r = run_maild("notify", "--to", "pat@example.com", "--template", "nope", "-c", str(out_app.config_path))
    assert r.returncode == 1 and b"no template 'nope'" in r.stderr
    assert rows(out_app) == []


def test_outbox_list_and_retry(out_app, relay):
    relay.start("--reject", "pat@example.com")
    ingest(out_app, mail(msgid="<l1@example.com>"))
    out_app.sender.run_once()
    listed = json.loads(run_maild("outbox", "list", "--json", "-c", str(out_app.config_path)).stdout)
    failed = [r for r in listed if r["status"] == "failed"]
    assert [r["kind"] for r in failed] == ["acknowledgement"] and failed[0]["recipients"] == ["pat@example.com"]
    r = run_maild("outbox", "retry", str(failed[0]["id"]), "-c", str(out_app.config_path))
    assert r.returncode == 0, r.stderr
    assert rows(out_app, id=failed[0]["id"])[0].status == "queued"


def test_no_header_injection_from_customer_text():
    out = Outgoing(kind="acknowledgement", mailbox="support", to=("pat@example.com",),
                   subject="Hello\r\nBcc: victim@example.org", body="x")
    data = compose(out, "support@acme.test", "Support\r\nX-Evil: 1", "maild.1@maild.acme.test", utcnow(), "t")
    msg = email.message_from_bytes(data)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert one_line("a\r\nb\x00c") == "a b c"


def queue_mail(app, n: int, cc: tuple[str, ...] = (), issue_id: int | None = None) -> list[int]:
    """n replies to pat@example.com queued the way the desk queues them."""
    with app.sessions() as s, s.begin():
        return [enqueue(s, Outgoing(kind="reply", mailbox="support", to=("pat@example.com",), cc=cc,
                                    subject=f"Mail {i}", body=f"Body {i}\n", issue_id=issue_id, auto=False,
                                    to_customer=True), app.notifier.policy).id for i in range(n)]


def notes(app, issue_id: int) -> list[str]:
    with app.sessions() as s:
        return list(s.scalars(select(Interaction.new_text).where(Interaction.channel == "note",
                                                                 Interaction.actions.any(issue_id=issue_id))
                              .order_by(Interaction.id)))


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_local_relay_writes_each_mail_once(tmp_path, db_url, monkeypatch, kind):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)  # a relative path is relative to the working directory
    app = build(load(write_config(tmp_path / "maild.toml", db_url, extra=outbound(f"{kind}:outgoing"))))
    try:
        ingest(app, mail(msgid="<m1@example.com>", body="From here on it burns."))
        assert app.sender.run_once()["sent"] == 3
        assert app.sender.run_once(now=utcnow() + timedelta(hours=1)) == {}  # a second run writes nothing again
        where = tmp_path / "outgoing"
        box = mailbox.Maildir(where, factory=None, create=False) if kind == "maildir" else mailbox.mbox(where)
        got = {m["To"]: m for m in box}
        assert set(got) == {"pat@example.com", "alice@acme.test", "bob@acme.test"} and len(box) == 3
        (ack,) = rows(app, kind="acknowledgement")
        assert got["pat@example.com"]["Message-ID"] == f"<{ack.message_id}>" and "[#1]" in ack_subject(got)
        assert ack.results == {"pat@example.com": {"code": 250, "text": ack.results["pat@example.com"]["text"]}}
        if kind == "maildir":
            assert len(list((where / "new").iterdir())) == 3 and not list((where / "tmp").iterdir())
        else:
            assert got["pat@example.com"].get_from().startswith("support@acme.test ")
            assert b"\n>From here on it burns." in where.read_bytes()  # mbox quoting of the customer's text
    finally:
        app.close()


def ack_subject(got: dict) -> str:
    return str(got["pat@example.com"]["Subject"])


@pytest.mark.slow
def test_two_senders_on_one_database_send_every_row_exactly_once(tmp_path, db_url, relay, monkeypatch):
    relay.start("--delay", "0.6")  # a slow relay: rows wait in a sender's hands longer than its lease
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    path = write_config(tmp_path / "maild.toml", db_url,
                        extra=outbound(f"127.0.0.1:{relay.port}", connections=2, sending_timeout=2.0))
    app = build(load(path))
    try:
        ids = queue_mail(app, 40)
        senders = [subprocess.Popen([sys.executable, "-m", "maild", "outbox", "send", "-c", str(path)],
                                    cwd=REPO, env={**os.environ, "MAILD_SECRET": SECRET}) for _ in range(2)]
        assert [p.wait(180) for p in senders] == [0, 0]
        sent = [m["Message-ID"].strip("<>") for _, m in relay.messages()]
        assert len(sent) == 40 and len(set(sent)) == 40
        assert {r.message_id for r in rows(app)} == set(sent) and {r.id for r in rows(app)} == set(ids)
        assert {(r.status, r.resends, r.lease_owner) for r in rows(app)} == {("sent", 0, None)}
    finally:
        app.close()


def test_a_row_ambiguous_twice_stops_as_unknown_and_the_reps_are_told_once(out_app, relay):
    relay.start()
    n = ingest(out_app, mail(msgid="<u1@example.com>")).stored.issue_id
    # The state crashes leave: rows "sending" under dead senders' expired leases, one of them
    # already resent once; and a row a live sender holds.
    with out_app.sessions() as s, s.begin():
        for row in s.scalars(select(OutboxMessage)):
            live = row.recipients == ["bob@acme.test"]
            row.status, row.lease_owner = "sending", "live" if live else "dead"
            row.lease_until = utcnow() + (timedelta(hours=1) if live else -timedelta(minutes=1))
            row.resends = 1 if row.kind == "acknowledgement" else 0
    counts = out_app.sender.run_once()
    assert counts == {"unknown": 1, "sent": 1}
    (ack,) = rows(out_app, kind="acknowledgement")
    assert (ack.status, ack.resends, ack.lease_owner) == ("unknown", 1, None)
    by_rcpt = {r.recipients[0]: r for r in rows(out_app, kind="notification")}
    resent, held = by_rcpt["alice@acme.test"], by_rcpt["bob@acme.test"]
    assert (resent.status, resent.resends) == ("sent", 1)
    assert (held.status, held.lease_owner) == ("sending", "live")  # a valid lease is never taken
    assert [env["to"] for env, _ in relay.messages()] == [["alice@acme.test"]]
    assert len(notes(out_app, n)) == 1 and "may or may not have been" in notes(out_app, n)[0]
    out_app.sender.run_once()
    out_app.sender.run_once()
    told = [m for _, m in relay.messages() if m["Subject"].startswith("Delivery uncertain")]
    assert sorted(m["To"] for m in told) == ["alice@acme.test", "bob@acme.test"]  # once each
    assert ack.message_id in told[0].get_content() and rows(out_app, kind="acknowledgement")[0].status == "unknown"


def test_relay_refusing_one_of_two_recipients_is_noted_marked_failing_and_told_once(out_app, relay):
    relay.start("--reject", "carl@example.org")
    n = ingest(out_app, mail(msgid="<r1@example.com>")).stored.issue_id
    with out_app.sessions() as s, s.begin():
        s.add(Customer(name="Carl", addresses=[CustomerAddress(email="carl@example.org", key="carl@example.org")]))
    out_app.sender.run_once()
    first = len(relay.messages())
    (row_id,) = queue_mail(out_app, 1, cc=("carl@example.org",), issue_id=n)
    assert out_app.sender.run_once() == {"sent": 1}
    (row,) = rows(out_app, id=row_id)
    words = "the relay refused carl@example.org: 550 5.1.1 mailbox unavailable"
    assert row.results == {"pat@example.com": {"code": 250, "text": "2.0.0 stored"},
                           "carl@example.org": {"code": 550, "text": "5.1.1 mailbox unavailable"}}
    assert row.last_error == words
    assert [env["to"] for env, _ in relay.messages()[first:]] == [["pat@example.com"]]
    assert len(notes(out_app, n)) == 1 and words in notes(out_app, n)[0]
    with out_app.sessions() as s:
        assert s.scalar(select(CustomerAddress.failing_until).where(CustomerAddress.key == "carl@example.org"))
    out_app.sender.run_once()
    out_app.sender.run_once()
    told = [m for _, m in relay.messages() if m["Subject"].startswith("Undeliverable")]
    assert sorted(m["To"] for m in told) == ["alice@acme.test", "bob@acme.test"]  # once each
    text = told[0].get_content()
    assert words in text and "(550" not in text and "b'" not in text


def test_daemon_sends_queued_mail_at_once_not_at_the_next_interval(tmp_path, db_url, relay, monkeypatch):
    relay.start()
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    config = daemon_config(tmp_path, db_url, daemon="\n" + outbound(f"127.0.0.1:{relay.port}", send_interval=3600.0))
    with InProcess(build_daemon(load(config))):
        with smtp_client(config) as c:
            c.sendmail("pat@example.com", ["support@acme.test"], message("Printer on fire"))
        deadline = time.monotonic() + 60
        while len(relay.messages()) < 2:  # the reps' notifications (acknowledgements are off here)
            assert time.monotonic() < deadline, "queued mail was not sent before the next send_interval"
            time.sleep(0.1)
    assert sorted(env["to"][0] for env, _ in relay.messages()) == ["alice@acme.test", "bob@acme.test"]


def test_a_connection_lost_after_data_counts_as_the_one_resend_then_unknown(out_app, relay):
    """The relay stores the mail and drops the line before its 250: the sender cannot know.
    That is the row's one resend; a second such loss stops it as unknown, never a third copy."""
    relay.start("--drop-after-data", "5")
    (row_id,) = queue_mail(out_app, 1)
    out_app.sender.run_once()
    (row,) = rows(out_app, id=row_id)
    assert (row.status, row.resends) == ("queued", 1)
    out_app.sender.run_once(now=utcnow() + timedelta(minutes=5))
    (row,) = rows(out_app, id=row_id)
    assert (row.status, row.resends) == ("unknown", 1)
    out_app.sender.run_once(now=utcnow() + timedelta(hours=1))
    copies = [m for _, m in relay.messages() if m["Subject"] == "Mail 0"]
    assert len(copies) == 2 and len({m["Message-ID"] for m in copies}) == 1


class _BrokenHooks:
    """Delivery hooks that fail (a template error, say): they must not undo delivery results."""

    def __getattr__(self, name):
        def hook(*args):
            raise RuntimeError(f"{name} is broken")
        return hook


def test_a_failing_delivery_hook_never_undoes_a_delivery(out_app, relay):
    relay.start("--reject", "bad@example.org")
    out_app.sender.hooks = _BrokenHooks()
    good, bad = queue_mail(out_app, 1)[0], queue_mail(out_app, 1, cc=("bad@example.org",))[0]
    with out_app.sessions() as s, s.begin():  # the second one's customer copy is refused outright
        s.get(OutboxMessage, bad).recipients = ["bad@example.org"]
    counts = out_app.sender.run_once()
    assert counts == {"sent": 1, "failed": 1}
    assert rows(out_app, id=good)[0].status == "sent" and rows(out_app, id=bad)[0].status == "failed"
    out_app.sender.run_once(now=utcnow() + timedelta(hours=1))
    assert len([m for _, m in relay.messages() if m["Subject"] == "Mail 0"]) == 1  # never sent again


def test_retrying_a_refused_row_sends_it_to_the_refused_recipient(out_app, relay, tmp_path):
    relay.start("--reject", "pat@example.com")
    (row_id,) = queue_mail(out_app, 1)
    out_app.sender.run_once()
    (row,) = rows(out_app, id=row_id)
    assert row.status == "failed" and row.results["pat@example.com"]["code"] == 550
    relay.stop()
    relay.start()  # the relay fixed: it takes pat@ now
    r = run_maild("outbox", "retry", str(row_id), "-c", str(out_app.config_path), env={"MAILD_SECRET": SECRET})
    assert r.returncode == 0, r.stderr
    assert out_app.sender.run_once() == {"sent": 1}
    assert [env["to"] for env, _ in relay.messages()] == [["pat@example.com"]]
    assert rows(out_app, id=row_id)[0].results["pat@example.com"]["code"] == 250


def test_retry_refuses_a_row_another_sender_is_sending(out_app, relay):
    (row_id,) = queue_mail(out_app, 1)
    with out_app.sessions() as s, s.begin():
        row = s.get(OutboxMessage, row_id)
        row.status, row.lease_owner, row.lease_until = "sending", "another", utcnow() + timedelta(minutes=5)
    r = run_maild("outbox", "retry", str(row_id), "-c", str(out_app.config_path), env={"MAILD_SECRET": SECRET})
    assert r.returncode == 1 and b"being sent right now" in r.stderr
    assert rows(out_app, id=row_id)[0].lease_owner == "another"


def test_a_bounce_of_a_notice_to_a_rep_attaches_to_its_issue(out_app, relay):
    """Notices to reps are outbox rows, not interactions; their bounces still find the issue."""
    relay.start()
    first = ingest(out_app, mail(msgid="<nb1@example.com>"))
    notice = next(r for r in rows(out_app, kind="notification") if r.recipients == ["alice@acme.test"])
    out_app.sender.run_once()
    bounce = ingest(out_app, _dsn(notice.message_id, "alice@acme.test"))
    assert bounce.stored.outcome == "interaction"
    assert bounce.stored.issue_id == first.stored.issue_id and not bounce.stored.new_issue
