"""IMAP intake against a real Dovecot: nothing lost, nothing twice, whatever the server does.

Each test starts its own Dovecot (tests/dovecot.py) on a free loopback port and
drives maild's IMAP edge as the daemon and `maild poll` do.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime, UTC
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

import pytest
from imapclient import SEEN
from imapclient.exceptions import IMAPClientError
from sqlalchemy import func, select

from conftest import REPO, SECRET, run_maild, toml_value, write_config
from dovecot import PASSWORD, Dovecot
from maild.app import build
from maild.config import load
from maild.ingest.imap.poller import ImapService, explain, imap_services
from maild.models import Interaction, Issue, OutboxMessage, RawMessage

PASSWORD_ENV = "MAILD_TEST_IMAP_PASSWORD"
WAIT = 60.0  # generous: how long a test waits for something to happen, never a measure


def mail(n: int, subject: str | None = None, pad_lines: int = 0, reply_to: int | None = None) -> bytes:
    m = EmailMessage(policy=SMTP)
    m["From"] = f"Customer {n % 7} <customer{n % 7}@example.com>"
    m["To"] = "support@acme.test"
    m["Subject"] = subject or f"Question number {n}"
    m["Date"] = format_datetime(datetime(2026, 11, 2, 9, 30, tzinfo=UTC))
    m["Message-ID"] = f"<q{n}@example.com>"
    if reply_to is not None:
        m["In-Reply-To"] = f"<q{reply_to}@example.com>"
    m.set_content(f"Message {n}: the printer is on fire.\n" + "Lorem ipsum dolor sit amet.\n" * pad_lines)
    return m.as_bytes()


def message_id(raw: bytes) -> str:
    line = next(ln for ln in raw.split(b"\r\n") if ln.lower().startswith(b"message-id:"))
    return line.split(b":", 1)[1].strip().decode()


def message_ids(messages: dict) -> list[str]:
    """The Message-IDs in a folder (see Dovecot.messages), sorted, copies included."""
    return sorted(message_id(raw) for raw, _flags in messages.values())


def folder_size(server: Dovecot, folder: str) -> int | None:
    """How many messages the folder holds; None while the server cannot be reached."""
    try:
        return len(server.messages(folder))
    except (OSError, IMAPClientError):
        return None


@pytest.fixture
def dovecot():
    server = Dovecot()
    server.start()
    yield server
    print(server.log())  # pytest shows it only when the test failed
    server.close()


def imap_config(tmp_path, db_url, server: Dovecot, extra: str = "", mailboxes: str = "", reps: str = "",
                acknowledge: bool = False, **imap):
    """Mailbox "support" drains the server's INBOX. By default no reps and no acknowledgements:
    most tests here are about intake, not about what maild sends."""
    keys = {"host": "127.0.0.1", "port": server.port, "tls": "none", "user": server.user,
            "password_env": PASSWORD_ENV, "poll_interval": 3600.0} | imap
    table = "\n".join(f"{k} = {toml_value(v)}" for k, v in keys.items() if v is not None)
    boxes = (f'[[mailbox]]\nname = "support"\naddress = "support@acme.test"\n'
             f'acknowledge = {toml_value(acknowledge)}\n\n[mailbox.imap]\n{table}\n\n')
    return write_config(tmp_path / "maild.toml", db_url, extra=extra, mailboxes=boxes + mailboxes, reps=reps)


@pytest.fixture
def make_app(tmp_path, db_url, monkeypatch):
    """Build a maild App for a config with one IMAP mailbox "support" on the given Dovecot."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    apps = []

    def make(server: Dovecot, **kwargs):
        app = build(load(imap_config(tmp_path, db_url, server, **kwargs)))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def service(app, **kwargs) -> ImapService:
    return ImapService(app, app.settings.mailbox_named("support"), **kwargs)


def stored(app) -> list[str]:
    with app.sessions() as s:
        return sorted(s.scalars(select(RawMessage.dedupe_key)))


def count(app, model) -> int:
    with app.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def inbound(app) -> int:
    """Interactions made from received mail (acknowledgements and notifications are outbound)."""
    with app.sessions() as s:
        return s.scalar(select(func.count()).select_from(Interaction).where(Interaction.direction == "inbound"))


def wait_for(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


class Running:
    """service.run(stop) in a thread, as the daemon runs it."""

    def __init__(self, *services: ImapService) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=s.run, args=(self.stop,), daemon=True) for s in services]

    def __enter__(self) -> Running:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in self.threads), "run() did not return after stop was set"


# -- one pass ------------------------------------------------------------------------


def test_new_mail_is_stored_threaded_then_moved_to_processed(make_app, dovecot):
    dovecot.append("INBOX", mail(1), mail(2), mail(3, subject="Re: Question number 1", reply_to=1))
    app = make_app(dovecot)
    report = service(app).poll_once()
    assert (report.stored, report.duplicates, report.moved) == (3, 0, 3)
    assert stored(app) == ["mid:q1@example.com", "mid:q2@example.com", "mid:q3@example.com"]
    assert inbound(app) == 3 and count(app, Issue) == 2  # the reply joined its issue
    assert dovecot.messages("INBOX") == {}
    assert message_ids(dovecot.messages("maild-processed")) == ["<q1@example.com>", "<q2@example.com>",
                                                                 "<q3@example.com>"]
    again = service(app).poll_once()
    assert not again and count(app, RawMessage) == 3


def test_mail_already_there_at_the_first_sync_is_a_backlog_and_causes_no_mail(make_app, dovecot):
    dovecot.append("INBOX", mail(1), mail(2))  # years of mail in the support mailbox
    # With a rep and acknowledgements, as a shop runs it.
    app = make_app(dovecot, acknowledge=True, reps='[[rep]]\nname = "Alice"\nemail = "alice@acme.test"\n')
    assert service(app).poll_once().stored == 2
    assert count(app, OutboxMessage) == 0  # no acknowledgement for old mail, no flood for the reps
    dovecot.append("INBOX", mail(3))  # live mail, after maild first looked
    assert service(app).poll_once().stored == 1
    with app.sessions() as s:
        queued = s.scalars(select(OutboxMessage)).all()
        sources = dict(s.execute(select(RawMessage.dedupe_key, RawMessage.source)).all())
    assert "acknowledgement" in {row.kind for row in queued}
    assert all("customer3@example.com" in row.recipients or row.rep_id for row in queued)
    assert sources == {"mid:q1@example.com": "import", "mid:q2@example.com": "import",
                       "mid:q3@example.com": "imap"}


def test_xoauth2_login(make_app, dovecot, monkeypatch):
    # This Dovecot checks an XOAUTH2 bearer token against the passwd-file like a password.
    monkeypatch.setenv("MAILD_TEST_IMAP_TOKEN", PASSWORD)
    dovecot.append("INBOX", mail(1))
    app = make_app(dovecot, password_env=None, oauth2_token_env="MAILD_TEST_IMAP_TOKEN")
    assert service(app).poll_once().stored == 1
    assert "method=XOAUTH2" in dovecot.log()


@pytest.mark.parametrize("keep", [False, True], ids=["move", "keep"])
def test_mail_another_client_marked_seen_is_still_fetched(make_app, dovecot, keep):
    dovecot.append("INBOX", mail(1), flags=[SEEN])
    dovecot.append("INBOX", mail(2))
    with dovecot.client() as other:  # read in another mail program before maild polls
        other.select_folder("INBOX")
        other.add_flags(other.search(["HEADER", "Message-ID", "q2@example.com"]), [SEEN])
    dovecot.append("INBOX", mail(3))
    app = make_app(dovecot, keep_on_server=keep)
    assert service(app).poll_once().stored == 3
    assert stored(app) == ["mid:q1@example.com", "mid:q2@example.com", "mid:q3@example.com"]
    if keep:  # and maild itself set no flag: the unread one is still unread
        flags = {message_id(raw): f for raw, f in dovecot.messages("INBOX").values()}
        assert SEEN in flags["<q1@example.com>"] and SEEN in flags["<q2@example.com>"]
        assert SEEN not in flags["<q3@example.com>"]


def test_keep_on_server_leaves_mail_in_place_and_fetches_each_message_once(make_app, dovecot):
    dovecot.append("INBOX", mail(1), mail(2))
    before = dovecot.messages("INBOX")
    app = make_app(dovecot, keep_on_server=True)
    assert service(app).poll_once().stored == 2
    assert dovecot.messages("INBOX") == before  # same messages, same flags
    with dovecot.client() as c:
        assert not c.folder_exists("maild-processed")
    # A restarted maild (same database) fetches nothing it has fetched before.
    offset = dovecot.log_size()
    app2 = make_app(dovecot, keep_on_server=True)
    assert not service(app2).poll_once()
    (session,) = dovecot.logouts(offset, 1)
    assert session["body_count"] == 0  # not one message body was fetched
    dovecot.append("INBOX", mail(3))
    offset = dovecot.log_size()
    report = service(app2).poll_once()
    assert (report.stored, report.duplicates) == (1, 0)
    (session,) = dovecot.logouts(offset, 1)
    assert session["body_count"] == 1  # only the new message was fetched
    assert len(dovecot.messages("INBOX")) == 3 and count(app2, RawMessage) == 3


def test_same_message_appended_twice_is_stored_once(make_app, dovecot):
    dovecot.append("INBOX", mail(1), mail(1), mail(2))
    app = make_app(dovecot)
    report = service(app).poll_once()
    assert (report.stored, report.duplicates, report.moved) == (2, 1, 3)
    dovecot.append("INBOX", mail(1))  # and once more, later
    report = service(app).poll_once()
    assert (report.stored, report.duplicates, report.moved) == (0, 1, 1)
    assert stored(app) == ["mid:q1@example.com", "mid:q2@example.com"]
    assert inbound(app) == 2
    assert dovecot.messages("INBOX") == {} and len(dovecot.messages("maild-processed")) == 4


def test_mail_for_two_mailboxes_is_stored_under_the_first_configured(make_app, dovecot):
    # "support" (first in config order) drains INBOX; "billing", after it, drains Billing.
    billing = (f'[[mailbox]]\nname = "billing"\naddress = "billing@acme.test"\n\n[mailbox.imap]\n'
               f'host = "127.0.0.1"\nport = {dovecot.port}\ntls = "none"\nuser = "{dovecot.user}"\n'
               f'password_env = "{PASSWORD_ENV}"\nfolder = "Billing"\n')
    both = mail(1).replace(b"To: support@acme.test", b"To: billing@acme.test\r\nCc: support@acme.test")
    dovecot.append("INBOX", both)
    dovecot.append("Billing", mail(2), mail(3).replace(b"To: support@acme.test", b"To: billing@acme.test"))
    app = make_app(dovecot, mailboxes=billing)
    for name in ("support", "billing"):
        assert ImapService(app, app.settings.mailbox_named(name)).poll_once().stored == 1 + (name == "billing")
    with app.sessions() as s:
        chosen = dict(s.execute(select(RawMessage.dedupe_key, RawMessage.mailbox)).all())
    assert chosen == {"mid:q1@example.com": "support", "mid:q2@example.com": "support",
                      "mid:q3@example.com": "billing"}


def test_uidvalidity_reset_rescans_and_adds_only_what_is_new(make_app, dovecot, caplog):
    caplog.set_level(logging.INFO, logger="maild.imap")
    dovecot.append("Support", mail(1), mail(2), mail(3))
    app = make_app(dovecot, folder="Support", keep_on_server=True)
    assert service(app).poll_once().stored == 3
    with dovecot.client() as c:
        old = c.select_folder("Support")[b"UIDVALIDITY"]
        c.unselect_folder()
        c.delete_folder("Support")  # the folder is recreated: UIDs start again at 1
    dovecot.append("Support", mail(2), mail(3), mail(4))
    with dovecot.client() as c:
        info = c.select_folder("Support")
        assert info[b"UIDVALIDITY"] != old and info[b"UIDNEXT"] == 4  # every new UID is below the old mark
    report = service(app).poll_once()
    assert (report.stored, report.duplicates) == (1, 2)
    assert stored(app) == [f"mid:q{i}@example.com" for i in (1, 2, 3, 4)]
    assert inbound(app) == 4
    assert "UIDVALIDITY changed" in caplog.text
    assert not service(app).poll_once()


@pytest.mark.parametrize("keep", [False, True], ids=["move", "keep"])
def test_oversize_mail_is_set_aside_once_and_never_fetched(make_app, dovecot, caplog, keep):
    caplog.set_level(logging.INFO, logger="maild.imap")
    big = mail(2, subject="Huge scan", pad_lines=400)
    assert len(big) > 8000
    dovecot.append("INBOX", mail(1), big, mail(3))
    app = make_app(dovecot, keep_on_server=keep, extra="[ingest]\nmax_message_size = 8000\n")
    offset = dovecot.log_size()
    report = service(app).poll_once()
    assert (report.stored, report.oversize) == (2, 1)
    assert dovecot.logouts(offset, 1)[0]["body_bytes"] < len(big)  # its body was never fetched
    warnings = [r for r in caplog.records if "max_message_size" in r.getMessage()]
    assert len(warnings) == 1 and "Huge scan" in warnings[0].getMessage()
    assert stored(app) == ["mid:q1@example.com", "mid:q3@example.com"]
    if keep:
        assert len(dovecot.messages("INBOX")) == 3
    else:
        assert dovecot.messages("INBOX") == {}
        assert message_ids(dovecot.messages("maild-oversize")) == ["<q2@example.com>"]
    caplog.clear()
    offset = dovecot.log_size()
    assert not service(app).poll_once()
    assert dovecot.logouts(offset, 1)[0]["body_count"] == 0
    assert "max_message_size" not in caplog.text


@pytest.mark.slow
def test_a_folder_of_5000_messages(make_app, dovecot, caplog):
    caplog.set_level(logging.INFO, logger="maild.imap")
    dovecot.deliver(mail(i) for i in range(5000))
    app = make_app(dovecot)
    report = service(app).poll_once()
    assert (report.stored, report.duplicates, report.moved) == (5000, 0, 5000)
    assert count(app, RawMessage) == 5000 and inbound(app) == 5000
    with dovecot.client() as c:
        assert c.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0
        assert c.select_folder("maild-processed", readonly=True)[b"EXISTS"] == 5000
    assert "5000 of 5000 messages fetched" in caplog.text  # a long sync shows progress


# -- running: IDLE, polling, failures --------------------------------------------------


@pytest.mark.slow
def test_idle_brings_new_mail_without_waiting_for_a_poll(make_app, dovecot):
    dovecot.append("INBOX", mail(1))
    app = make_app(dovecot, poll_interval=3600.0)  # only IDLE can bring mail within the test
    with Running(service(app)):
        wait_for(lambda: count(app, RawMessage) == 1, "the first message")
        for n in (2, 3):
            dovecot.append("INBOX", mail(n))
            wait_for(lambda n=n: inbound(app) == n, f"message {n}")
            wait_for(lambda: dovecot.messages("INBOX") == {}, f"message {n} moved")
        dovecot.restart()  # while maild idles: it reconnects and idles again
        dovecot.append("INBOX", mail(4))
        wait_for(lambda: inbound(app) == 4, "message 4, after the restart")
    assert stored(app) == [f"mid:q{n}@example.com" for n in (1, 2, 3, 4)]


def test_without_idle_or_move_it_polls_and_copies_then_expunges(make_app):
    with Dovecot(capabilities="IMAP4rev1 LITERAL+ UIDPLUS") as server:
        app = make_app(server, poll_interval=0.2)
        with server.client() as c:
            assert b"IDLE" not in c.capabilities() and b"MOVE" not in c.capabilities()
        with Running(service(app)):
            server.append("INBOX", mail(1), mail(2))
            wait_for(lambda: len(server.messages("maild-processed")) == 2, "both messages moved")
            server.append("INBOX", mail(3))
            wait_for(lambda: len(server.messages("maild-processed")) == 3, "the third message moved")
        assert server.messages("INBOX") == {}
        assert stored(app) == ["mid:q1@example.com", "mid:q2@example.com", "mid:q3@example.com"]


@pytest.mark.slow
def test_server_restart_mid_sync_loses_nothing_and_doubles_nothing(make_app, dovecot, caplog):
    caplog.set_level(logging.INFO, logger="maild.imap")
    dovecot.deliver(mail(i) for i in range(450))
    app = make_app(dovecot)
    asked, restarted = threading.Event(), threading.Event()

    def restart_once(session, result):
        # Runs inside the first batch, after its bytes are committed and before they are
        # moved, and waits there while the test's own thread restarts the server.
        if not asked.is_set():
            asked.set()
            restarted.wait(WAIT)

    app.pipeline.hooks.append(restart_once)
    with Running(service(app, backoff=(0.2, 2.0))):
        wait_for(asked.is_set, "the first batch to be stored")
        dovecot.restart()
        restarted.set()
        wait_for(lambda: folder_size(dovecot, "maild-processed") == 450, "all 450 messages moved after the restart")
    assert count(app, RawMessage) == 450 and inbound(app) == 450
    processed = dovecot.messages("maild-processed")
    assert len(set(message_ids(processed))) == 450 and dovecot.messages("INBOX") == {}
    lost = [r.getMessage() for r in caplog.records if "reconnecting in" in r.getMessage()]
    assert lost and all("\n" not in line for line in lost)
    assert "connected again" in caplog.text


def test_a_broken_mailbox_never_stops_the_others(make_app, dovecot, caplog, monkeypatch):
    monkeypatch.setenv("MAILD_TEST_WRONG_PASSWORD", "not-the-password")
    monkeypatch.delenv("MAILD_TEST_UNSET", raising=False)
    broken = "".join(
        f'[[mailbox]]\nname = "{name}"\naddress = "{name}@acme.test"\n\n[mailbox.imap]\n'
        f'host = "127.0.0.1"\nport = {dovecot.port}\ntls = "none"\nuser = "support"\n'
        f'password_env = "{env}"\nfolder = "Other"\n\n'
        for name, env in (("wrongpass", "MAILD_TEST_WRONG_PASSWORD"), ("noenv", "MAILD_TEST_UNSET")))
    app = make_app(dovecot, mailboxes=broken, poll_interval=3600.0)
    services = imap_services(app)
    assert [s.name for s in services] == ["support", "wrongpass", "noenv"]
    with Running(*services):
        dovecot.append("INBOX", mail(1))
        wait_for(lambda: inbound(app) == 1, "mail of the working mailbox")
        wait_for(lambda: sum("imap wrongpass" in r.getMessage() for r in caplog.records) >= 2,
                 "a second login attempt after the backoff")
    lines = [r for r in caplog.records if r.name == "maild.imap" and r.levelno == logging.WARNING
             and ("imap wrongpass" in r.getMessage() or "imap noenv" in r.getMessage())]
    wrong = [r.getMessage() for r in lines if "imap wrongpass" in r.getMessage()]
    unset = [r.getMessage() for r in lines if "imap noenv" in r.getMessage()]
    assert all("login failed for support@127.0.0.1" in m and "reconnecting in" in m for m in wrong)
    assert unset and "MAILD_TEST_UNSET (imap.password_env) is not set" in unset[0]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)


@pytest.mark.parametrize("mode", ["tls", "starttls"])
def test_tls_and_starttls_verify_the_server_certificate(make_app, monkeypatch, mode):
    with Dovecot(tls=True) as server:
        server.append("INBOX", mail(1))
        port = server.tls_port if mode == "tls" else server.port
        app = make_app(server, tls=mode, port=port)
        with pytest.raises(ssl.SSLCertVerificationError) as err:  # not signed by a trusted CA
            service(app).poll_once()
        assert explain(err.value, app.settings.mailbox[0].imap).startswith("TLS with 127.0.0.1")
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))  # now the server's certificate is trusted
        assert service(app).poll_once().stored == 1


# -- the command ----------------------------------------------------------------------


@pytest.mark.slow
def test_poll_command_once_and_until_sigterm(tmp_path, db_url, dovecot, monkeypatch):
    env = {PASSWORD_ENV: PASSWORD}
    config = imap_config(tmp_path, db_url, dovecot, poll_interval=3600.0,
                         mailboxes='[[mailbox]]\nname = "billing"\naddress = "billing@acme.test"\n')
    dovecot.append("INBOX", mail(1), mail(2))
    r = run_maild("poll", "--mailbox", "support", "--once", "-c", str(config), env=env)
    assert r.returncode == 0, r.stderr
    assert b"support: 2 new, 0 already stored, 0 oversize, 2 moved" in r.stdout
    r = run_maild("poll", "--mailbox", "billing", "--once", "-c", str(config), env=env)
    assert r.returncode == 78 and b"no [mailbox.imap] table" in r.stderr

    proc = subprocess.Popen([sys.executable, "-m", "maild", "poll", "-c", str(config)], cwd=REPO,
                            env={**os.environ, "MAILD_SECRET": SECRET, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        monkeypatch.setenv("MAILD_SECRET", SECRET)
        app = build(load(config))
        dovecot.append("INBOX", mail(3))
        wait_for(lambda: inbound(app) == 3, "the continuous poller to store new mail")
        app.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err

    dovecot.stop()
    r = run_maild("poll", "--once", "-c", str(config), env=env)
    assert r.returncode == 75 and b"imap support: connection to 127.0.0.1" in r.stderr
