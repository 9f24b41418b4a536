"""The SMTP and LMTP edges of `maild run`, over loopback with real clients (smtplib, swaks)."""

from __future__ import annotations

import base64
import smtplib
import socket
import sqlite3
import ssl
import subprocess

import pytest
from sqlalchemy.engine import make_url

from daemon_helpers import Maild, TcpProxy, daemon_config, message, ports_of, smtp_client


@pytest.fixture
def start(tmp_path, db_url):
    """start(**daemon_config options, env=...) -> a running Maild, stopped at teardown."""
    running: list[Maild] = []

    def go(env: dict | None = None, **options) -> Maild:
        m = Maild(daemon_config(tmp_path, db_url, **options), env=env).start()
        running.append(m)
        return m

    yield go
    for m in running:
        m.stop()
        m.kill()


def swaks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["swaks", "--timeout", "30", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_recipients_only_for_our_mailboxes_never_a_relay(start, db):
    maild = start()
    with smtp_client(maild.config) as s:
        s.ehlo("client.test")
        s.mail("pat@example.com")
        for ok in ("support@acme.test", "help@acme.test", "SUPPORT+Ticket-12@ACME.test", "billing+x@acme.test"):
            assert s.rcpt(ok)[0] == 250, ok
        for bad in ("outsider@example.org", "support@acme.test.evil.org", "supportx@acme.test",
                    "support@other.test", "x+support@acme.test"):
            code, text = s.rcpt(bad)
            assert (code, text[:5]) == (550, b"5.1.1"), bad
        s.rset()
        s.sendmail("pat@example.com", ["support+abc@acme.test"], message("Through a subaddress"))
    port = ports_of(maild.config)["smtp"]
    r = swaks("--server", f"127.0.0.1:{port}", "--from", "spam@example.net", "--to", "victim@example.org")
    assert r.returncode == 24, r.stdout  # swaks: no RCPT accepted
    assert "550 5.1.1" in r.stdout
    db.wait_processed(1)
    assert db.raw_mailboxes() == ["support"]
    assert db.inbound_subjects() == {"Through a subaddress": 1}
    assert "refused proto=smtp peer=127.0.0.1 from=<spam@example.net> to=<victim@example.org> code=550" in maild.log


def test_size_limit_is_announced_and_enforced_without_buffering(start, db):
    maild = start(smtp="max_message_size = 20000")
    with smtp_client(maild.config) as s:
        s.ehlo("client.test")
        assert s.esmtp_features["size"] == "20000"
        # smtplib announces the size in MAIL FROM, and is refused there.
        with pytest.raises(smtplib.SMTPSenderRefused) as err:
            s.sendmail("pat@example.com", ["support@acme.test"], message("Too big", size=40000))
        assert (err.value.smtp_code, err.value.smtp_error[:5]) == (552, b"5.3.4")
        # A client that does not announce it is refused after DATA.
        s.mail("pat@example.com")
        s.rcpt("support@acme.test")
        code, text = s.data(message("Too big", size=40000))
        assert (code, text[:5]) == (552, b"5.3.4")
        # The session stays usable; a message under the limit is taken.
        s.sendmail("pat@example.com", ["support@acme.test"], message("Small enough", size=10000))
    # A peer that sends a line without end is cut off rather than buffered.
    with socket.create_connection(("127.0.0.1", ports_of(maild.config)["smtp"]), timeout=30) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"HELO client.test\r\nMAIL FROM:<pat@example.com>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n")
        for _ in range(4):
            f.readline()
        try:
            sock.sendall(b"x" * (3 << 20))
            rest = f.read()
        except OSError:  # reset: the daemon closed with our bytes still unread
            rest = b""
        assert rest in (b"", b"500 5.5.2 Line too long, closing connection\r\n")
    assert "code=500 reason=line-too-long" in maild.log
    db.wait_processed(1)
    assert db.inbound_subjects() == {"Small enough": 1}
    assert db.raw_count() == 1


class DatabaseLock:
    """Another client holding the database so the daemon cannot write (SQLite) or read (PostgreSQL)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def __enter__(self):
        if self.db_url.startswith("sqlite"):
            self.conn = sqlite3.connect(self.db_url.removeprefix("sqlite:///"), isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")
        else:
            import psycopg

            self.conn = psycopg.connect(self.db_url.replace("postgresql+psycopg://", "postgresql://"))
            self.conn.execute("LOCK TABLE raw_messages IN ACCESS EXCLUSIVE MODE")
        return self

    def __exit__(self, *exc):
        self.conn.rollback()
        self.conn.close()


@pytest.mark.slow
def test_451_while_the_database_is_unavailable_then_stored_once_on_retry(start, db, db_url):
    maild = start()
    raw = message("Sent while the database was locked")
    with smtp_client(maild.config) as s:
        with DatabaseLock(db_url):
            with pytest.raises(smtplib.SMTPDataError) as err:
                s.sendmail("pat@example.com", ["support@acme.test"], raw)
            assert (err.value.smtp_code, err.value.smtp_error[:5]) == (451, b"4.3.0")
        s.sendmail("pat@example.com", ["support@acme.test"], raw)  # the sender's retry
        db.wait_processed(1)
        s.sendmail("pat@example.com", ["support@acme.test"], raw)  # and one retry too many
    db.wait_processed(1)
    assert db.raw_count() == 1
    assert db.inbound_subjects() == {"Sent while the database was locked": 1}
    assert "code=451 reason=not-stored" in maild.log
    assert "duplicate=yes" in maild.log


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_451_while_postgresql_is_down_then_stored_once_on_retry(db, db_url, tmp_path):
    url = make_url(db_url)
    proxy = TcpProxy((url.host, url.port))
    maild = Maild(daemon_config(tmp_path, url.set(port=proxy.port).render_as_string(hide_password=False)))
    try:
        maild.start()
        raw = message("Sent while the database was down")
        with smtp_client(maild.config) as s:
            proxy.down()
            with pytest.raises(smtplib.SMTPDataError) as err:
                s.sendmail("pat@example.com", ["support@acme.test"], raw)
            assert (err.value.smtp_code, err.value.smtp_error[:5]) == (451, b"4.3.0")
            proxy.up()
            s.sendmail("pat@example.com", ["support@acme.test"], raw)
        db.wait_processed(1)
        assert db.inbound_subjects() == {"Sent while the database was down": 1}
        assert maild.stop() == 0
    finally:
        maild.kill()
        proxy.close()


def test_lmtp_answers_each_recipient_and_stores_once(start, db):
    maild = start(lmtp=True, smtp="max_message_size = 20000")
    port = ports_of(maild.config)["lmtp"]
    with smtplib.LMTP("127.0.0.1", port) as lmtp:
        assert lmtp.ehlo("mta.test")[0] == 250  # LHLO
        assert lmtp.mail("pat@example.com")[0] == 250
        assert lmtp.rcpt("support@acme.test")[0] == 250
        assert lmtp.rcpt("nobody@acme.test")[0] == 550
        assert lmtp.rcpt("billing+x@acme.test")[0] == 250
        first = lmtp.data(message("For two mailboxes over LMTP", to="support@acme.test, billing@acme.test"))
        second = lmtp.getreply()
        assert [first[0], second[0]] == [250, 250]
        # Oversize: one 552 per recipient, and the session stays in step.
        lmtp.mail("pat@example.com")
        lmtp.rcpt("support@acme.test")
        lmtp.rcpt("billing@acme.test")
        replies = [lmtp.data(message("Too big for LMTP", size=40000)), lmtp.getreply()]
        assert [(c, t[:5]) for c, t in replies] == [(552, b"5.3.4"), (552, b"5.3.4")]
        assert lmtp.noop()[0] == 250
    r = swaks("--protocol", "LMTP", "--server", f"127.0.0.1:{port}", "--from", "sam@example.com",
              "--to", "support@acme.test,billing@acme.test", "--header", "Subject: From swaks over LMTP")
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("<-  250 2.0.0 OK stored as") == 2
    db.wait_processed(2)
    assert db.raw_mailboxes() == ["support", "support"]
    assert db.inbound_subjects() == {"For two mailboxes over LMTP": 1, "From swaks over LMTP": 1}


def test_mail_for_two_mailboxes_is_stored_once_under_the_first_configured(start, db):
    maild = start()
    both = message("Billing and support", to="billing@acme.test", cc="support@acme.test")
    with smtp_client(maild.config) as s:
        s.sendmail("pat@example.com", ["billing@acme.test", "support@acme.test"], both)
        # A sender's server that splits the recipients into two transactions.
        s.sendmail("pat@example.com", ["billing@acme.test"], both)
        s.sendmail("pat@example.com", ["billing@acme.test"], message("Billing only", to="billing@acme.test"))
    db.wait_processed(2)
    assert db.raw_mailboxes() == ["support", "billing"]
    assert db.inbound_subjects() == {"Billing and support": 1, "Billing only": 1}


@pytest.fixture
def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_starttls_and_auth_only_over_tls(start, db, certificate):
    cert, key = certificate
    maild = start(env={"MAILD_TEST_USERS": "agent:s3cret,other:pw"},
                  smtp=f'tls_cert = "{cert}"\ntls_key = "{key}"\nauth_users_env = "MAILD_TEST_USERS"')
    ctx = ssl.create_default_context(cafile=str(cert))  # verified: the name is localhost
    with smtp_client(maild.config, host="localhost") as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls") and not s.has_extn("auth")
        assert s.docmd("AUTH", "PLAIN " + _plain("agent", "s3cret"))[0] == 538  # not before TLS
        s.starttls(context=ctx)
        s.ehlo("client.test")
        assert s.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("agent", "wrong")
        s.login("agent", "s3cret")
        s.mail("agent@acme.test")
        assert s.rcpt("outsider@example.org")[0] == 550  # authenticated, still no relay
        s.rset()
        s.sendmail("agent@acme.test", ["support@acme.test"], message("Over TLS", frm="pat@example.com"))
    port = str(ports_of(maild.config)["smtp"])
    base = ["--server", f"localhost:{port}", "--tls", "--tls-verify", "--tls-ca-path", str(cert),
            "--from", "sam@example.com", "--to", "help@acme.test"]
    r = swaks(*base, "--auth", "LOGIN", "--auth-user", "agent", "--auth-password", "s3cret",
              "--header", "Subject: swaks over TLS")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TLS started" in r.stdout
    r = swaks(*base, "--auth", "LOGIN", "--auth-user", "agent", "--auth-password", "nope")
    assert r.returncode == 28, r.stdout  # swaks: error in AUTH
    db.wait_processed(2)
    assert db.inbound_subjects() == {"Over TLS": 1, "swaks over TLS": 1}


def test_auth_required_on_a_loopback_listener_without_tls(start, db):
    maild = start(env={"MAILD_TEST_USERS": "webform:pw"},
                  smtp='auth_users_env = "MAILD_TEST_USERS"\nauth_require_tls = false\nauth_required = true')
    with smtp_client(maild.config) as s:
        s.ehlo("webapp.test")
        assert s.has_extn("auth") and not s.has_extn("starttls")
        assert s.mail("form@acme.test")[0] == 530
        s.login("webform", "pw")
        s.sendmail("form@acme.test", ["support@acme.test"], message("From the web form"))
    db.wait_processed(1)
    assert db.inbound_subjects() == {"From the web form": 1}
