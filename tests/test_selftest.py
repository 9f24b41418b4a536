"""The self-test of every support address: signed probes out through the relay, back through the intake.

In process: a probe's bytes from the outbox, stored and run through the
pipeline, are recorded as returned and become no issue, acknowledgement or
notification; a forged probe header is ordinary mail; an address that stops
answering alerts once and clears once. Against the real daemon: probes
return through SMTP and through a real Dovecot (the relay delivers into the
Maildir that Dovecot serves and maild polls); with Dovecot stopped the alert
goes out once, and when it is back the "recovered" mail follows.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from maild.app import build
from maild.config import load
from maild.ingest.intake import Incoming, accept
from maild.models import Interaction, Issue, OutboxMessage, SelftestProbe, utcnow
from conftest import REPO, SECRET, run_maild, toml_value, write_config
from daemon_helpers import Maild, free_port

CONFIG = '[selftest]\nalert_after = 60\nalert_to = ["lead@acme.test"]\n'


@pytest.fixture
def app(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    a = build(load(write_config(tmp_path / "maild.toml", db_url, extra=CONFIG)))
    yield a
    a.close()


def count(app, model, *where) -> int:
    with app.sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def come_back(app, data: bytes, to: str, source: str = "smtp"):
    """What the relay would hand back: the bytes, stored and processed as any mail."""
    mailbox = next(m.name for m in app.settings.mailbox if to in m.all_addresses)
    accepted = accept(app.sessions, Incoming(data, mailbox, source, envelope_to=(to,)))
    if accepted.duplicate:
        return None
    (outcome,) = app.pipeline.process([accepted.raw_id])
    assert outcome.state == "done", outcome.error
    return outcome.stored


def queued_probes(app) -> list[tuple[str, bytes]]:
    with app.sessions() as s:
        return [(r.recipients[0], r.data) for r in s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "probe")
                                                             .order_by(OutboxMessage.id))]


def test_a_probe_comes_back_as_a_probe_and_never_as_an_issue(app):
    tokens = app.selftest.send("manual")
    assert len(tokens) == 3  # support@, its alias help@, billing@
    probes = queued_probes(app)
    assert sorted(to for to, _ in probes) == ["billing@acme.test", "help@acme.test", "support@acme.test"]
    for to, data in probes:
        stored = come_back(app, data, to)
        assert (stored.outcome, stored.issue_id, stored.interaction_id) == ("probe", None, None)
    views = app.selftest.probes(tokens)
    assert {(p.address, p.state, p.returned_via) for p in views} == {
        ("support@acme.test", "ok", "smtp"), ("help@acme.test", "ok", "smtp"), ("billing@acme.test", "ok", "smtp")}
    assert count(app, Issue) == 0 and count(app, Interaction) == 0
    assert count(app, OutboxMessage) == 3  # the probes themselves: no acknowledgement, no notification
    # The same probe again (another path) is the same message: stored once, nothing changes.
    assert come_back(app, probes[0][1], probes[0][0], "imap") is None
    assert {p.returned_via for p in app.selftest.probes(tokens)} == {"smtp"}


def test_a_forged_probe_header_is_ordinary_mail(app):
    app.selftest.send("manual", "billing")
    ((to, data),) = queued_probes(app)
    token = data.split(b"X-Maild-Probe: ", 1)[1].split(b".", 1)[0].decode()
    forged = (f"X-Maild-Probe: {token}.{'a' * 26}\r\nFrom: Mallory <mallory@example.com>\r\nTo: {to}\r\n"
              "Subject: Please help\r\nMessage-ID: <forged@example.com>\r\n\r\nA real question.\r\n").encode()
    stored = come_back(app, forged, to)
    assert stored.outcome == "interaction" and stored.new_issue  # a customer's mail, answered as such
    assert app.selftest.probes([token])[0].returned_at is None


def test_a_validly_signed_probe_header_on_someone_else_s_mail_is_ordinary_mail(app):
    """A probe's signed header copied onto another mail (someone saw one), or replayed once the
    probe is back: the mail is a customer's like any other, never swallowed as a probe."""
    app.selftest.send("manual", "billing")
    ((to, data),) = queued_probes(app)
    header = data.split(b"X-Maild-Probe: ", 1)[1].split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode().strip()
    copied = (f"X-Maild-Probe: {header}\r\nFrom: Mallory <mallory@example.com>\r\nTo: {to}\r\n"
              "Subject: Refund\r\nMessage-ID: <copied@example.com>\r\n\r\nA real question.\r\n").encode()
    stored = come_back(app, copied, to)
    assert stored.outcome == "interaction" and stored.new_issue
    assert come_back(app, data, to).outcome == "probe"  # the probe itself, from our address
    replayed = data.replace(b"Message-ID: <", b"Message-ID: <replayed.")
    assert come_back(app, replayed, to).outcome == "own-mail"  # back already: our own mail, not a probe


def test_a_failing_address_alerts_once_and_clears_once(app):
    start = utcnow()
    app.selftest.send("schedule", "billing", now=start)  # never comes back
    assert app.selftest.evaluate(start + timedelta(seconds=30)) == {}  # still within alert_after
    assert app.selftest.evaluate(start + timedelta(seconds=61)) == {"alert": 1}
    app.selftest.send("schedule", "billing", now=start + timedelta(seconds=62))  # lost too
    assert app.selftest.evaluate(start + timedelta(seconds=200)) == {}  # alerted already
    app.selftest.send("schedule", "billing")
    ((to, data),) = queued_probes(app)[-1:]
    come_back(app, data, to)
    assert app.selftest.evaluate() == {"recovered": 1}
    assert app.selftest.evaluate() == {}
    with app.sessions() as s:
        told = [(r.recipients, r.data) for r in s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "selftest")
                                                          .order_by(OutboxMessage.id))]
    assert [r for r, _ in told] == [["lead@acme.test"], ["lead@acme.test"]]
    subjects = [email.message_from_bytes(d, policy=email.policy.default)["Subject"] for _, d in told]
    assert subjects == ["maild self-test: billing@acme.test is not receiving mail",
                        "maild self-test: billing@acme.test receives mail again"]
    assert count(app, Interaction) == 0  # alerts concern no issue


# -- against the real daemon, SMTP and a real Dovecot ---------------------------------------


def _alerts(sink: Path) -> list[str]:
    out = []
    for eml in sorted(sink.glob("*.eml")):
        msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        if str(msg["Subject"]).startswith("maild self-test:"):
            out.append(str(msg["Subject"]))
    return out


def _wait(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_probes_return_through_smtp_and_dovecot_and_a_stopped_imap_server_alerts_once(tmp_path, db_url):
    from dovecot import PASSWORD, Dovecot

    smtp_port, relay_port = free_port(), free_port()
    sink = tmp_path / "sink"
    dovecot = Dovecot()
    dovecot.start()
    router = None
    maild = None
    try:
        account = dovecot.account
        router = subprocess.Popen([
            sys.executable, str(REPO / "tests" / "relay_router.py"), "--port", str(relay_port), "--dir", str(sink),
            "--forward", f"support@acme.test=127.0.0.1:{smtp_port}",
            "--forward", f"help@acme.test=127.0.0.1:{smtp_port}",
            "--maildir", f"inbox@acme.test={dovecot.maildir()}:{account.pw_uid}:{account.pw_gid}",
        ])
        _wait(lambda: (sink / "ready").exists(), "the relay")
        imap = {"host": "127.0.0.1", "port": dovecot.port, "tls": "none", "user": dovecot.user,
                "password_env": "MAILD_TEST_IMAP_PASSWORD", "poll_interval": 1.0}
        boxes = ('[[mailbox]]\nname = "support"\naddress = "support@acme.test"\naliases = ["help@acme.test"]\n'
                 'acknowledge = false\n\n[[mailbox]]\nname = "inbox"\naddress = "inbox@acme.test"\n'
                 "acknowledge = false\n\n[mailbox.imap]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in imap.items())
                 + "\n")
        extra = (f'[smtp]\nlisten = "127.0.0.1:{smtp_port}"\n\n[daemon]\ndrain_interval = 1.0\n\n'
                 f'[outbound]\nrelay = "127.0.0.1:{relay_port}"\nsend_interval = 0.5\nretry_base = 1.0\n\n'
                 '[selftest]\ninterval = 2.0\nalert_after = 8.0\nalert_to = ["lead@acme.test"]\n')
        config = write_config(tmp_path / "maild.toml", db_url, extra=extra, mailboxes=boxes)
        env = {"MAILD_TEST_IMAP_PASSWORD": PASSWORD}
        maild = Maild(config, env=env).start()

        # On demand: every address answers, by its own path.
        r = run_maild("selftest", "--wait", "30", "--json", "-c", str(config), env=env)
        assert r.returncode == 0, r.stderr.decode()
        result = json.loads(r.stdout)
        assert result["ok"] and result["failed"] == []
        assert {(p["address"], p["via"], p["state"]) for p in result["probes"]} == {
            ("support@acme.test", "smtp", "ok"), ("help@acme.test", "smtp", "ok"), ("inbox@acme.test", "imap", "ok")}
        assert all(p["round_trip"] is not None and p["round_trip"] >= 0 for p in result["probes"])

        # The IMAP server goes away: one alert for its address, however many rounds fail.
        dovecot.stop()
        _wait(lambda: _alerts(sink), "the alert", timeout=90)
        r = run_maild("selftest", "--mailbox", "inbox", "--wait", "3", "-c", str(config), env=env)
        assert r.returncode == 1 and b"self-test failed for inbox@acme.test" in r.stderr
        time.sleep(6)  # three more scheduled rounds
        assert _alerts(sink) == ["maild self-test: inbox@acme.test is not receiving mail"]

        # Back again: probes return (the waiting ones too), and one "recovered" mail clears the alert.
        dovecot.start()
        _wait(lambda: len(_alerts(sink)) > 1, "the recovery", timeout=90)
        time.sleep(4)
        assert _alerts(sink) == ["maild self-test: inbox@acme.test is not receiving mail",
                                 "maild self-test: inbox@acme.test receives mail again"]
        history = json.loads(run_maild("selftest", "--history", "--limit", "500", "--json", "-c", str(config),
                                       env=env).stdout)
        inbox = [p for p in history if p["address"] == "inbox@acme.test"]
        # The probes written while Dovecot was down were fetched once it was back, late; the folder's
        # backlog at the poller's first sync after the outage counts as imported.
        assert {p["via"] for p in inbox} <= {"imap", "import", None} and "imap" in {p["via"] for p in inbox}
        assert {"ok", "late"} <= {p["state"] for p in inbox}
        assert {p["state"] for p in history if p["address"] == "support@acme.test"} <= {"ok", "waiting"}
        # Not one probe became an issue.
        r = run_maild("issues", "list", "--json", "-c", str(config), env=env)
        assert r.returncode == 0 and json.loads(r.stdout) == []
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- maild's log:\n{maild.log[-6000:] if maild else ''}") from None
    finally:
        if maild is not None:
            maild.stop()
        if router is not None:
            router.terminate()
            router.wait(10)
        dovecot.close()


def test_selftest_without_the_secret_says_so(tmp_path, db_url):
    config = write_config(tmp_path / "maild.toml", db_url, extra=CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "MAILD_SECRET"}
    r = subprocess.run([sys.executable, "-m", "maild", "selftest", "--wait", "0", "-c", str(config)],
                       capture_output=True, env=env, cwd=REPO, timeout=60)
    assert r.returncode == 78 and b"MAILD_SECRET" in r.stderr
    assert count_probes(config) == 0


def count_probes(config: Path) -> int:
    app = build(load(config))
    try:
        return count(app, SelftestProbe)
    finally:
        app.close()
