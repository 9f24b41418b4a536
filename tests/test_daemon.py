"""`maild run` as a daemon: lifecycle, signals, load, the backlog bound, and its seams."""

from __future__ import annotations

import signal
import smtplib
import socket
import threading
import time

import pytest

from conftest import run_maild, write_config
from daemon_helpers import InProcess, Maild, daemon_config, message, ports_of, smtp_client


@pytest.fixture
def procs():
    """Maild processes started by the test, killed at teardown if still running."""
    started: list[Maild] = []
    yield started
    for m in started:
        m.kill()


def _client(config, n: int, count: int, accepted: list, lock: threading.Lock, enough=None, at: int = 0) -> None:
    """One sender: `count` messages on one connection; records each that got 250."""
    try:
        with smtp_client(config) as s:
            for i in range(count):
                subject = f"Message {n}-{i}"
                s.sendmail(f"c{n}@example.com", ["support@acme.test"], message(subject, frm=f"c{n}@example.com"))
                with lock:
                    accepted.append(subject)
                    if enough is not None and len(accepted) >= at:
                        enough.set()
    except (smtplib.SMTPException, OSError):
        pass  # refused or cut off: not acknowledged, so the sender still has it


def _burst(config, clients: int, count: int, enough=None, at: int = 0):
    accepted: list[str] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_client, args=(config, n, count, accepted, lock, enough, at)) for n in range(clients)
    ]
    for t in threads:
        t.start()
    return threads, accepted


@pytest.mark.slow
def test_concurrent_clients_every_accepted_message_is_one_interaction(tmp_path, db_url, db, procs):
    config = daemon_config(tmp_path, db_url)
    procs.append(maild := Maild(config).start())
    threads, accepted = _burst(config, clients=20, count=10)
    for t in threads:
        t.join(120)
    assert len(accepted) == 200
    db.wait_processed(200)
    assert db.inbound_subjects() == {s: 1 for s in accepted}
    assert maild.log.count("maild.smtp accepted proto=smtp") == 200
    assert maild.log.count("maild.ingest processed raw=") == 200
    assert maild.stop() == 0


def test_sigterm_in_the_middle_of_a_burst_loses_nothing(tmp_path, db_url, db, procs):
    config = daemon_config(tmp_path, db_url)
    procs.append(maild := Maild(config).start())
    enough = threading.Event()
    threads, accepted = _burst(config, clients=8, count=50, enough=enough, at=40)
    assert enough.wait(120)
    maild.send_signal(signal.SIGTERM)
    assert maild.proc.wait(60) == 0
    for t in threads:
        t.join(60)
    assert 40 <= len(accepted) < 400, "the shutdown did not land in the burst"
    assert "maild.daemon stopped" in maild.log
    # The next start processes whatever was stored but not yet processed.
    procs.append(again := Maild(config).start())
    db.wait_processed(len(accepted))
    subjects = db.inbound_subjects()
    assert all(subjects[s] == 1 for s in accepted)
    assert set(subjects.values()) == {1} and sum(subjects.values()) == db.raw_count()
    assert again.stop(signal.SIGINT) == 0


def test_mail_stored_before_start_is_processed_at_start(tmp_path, db_url, db, procs):
    from maild.app import build
    from maild.config import load
    from maild.ingest.intake import Incoming, accept

    config = daemon_config(tmp_path, db_url)
    app = build(load(config))
    for i in range(3):
        accept(app.sessions, Incoming(message(f"Left over {i}"), "support", "pipe"))
    app.close()
    procs.append(maild := Maild(config).start())
    db.wait_processed(3)
    assert db.inbound_subjects() == {f"Left over {i}": 1 for i in range(3)}
    assert "pending=3" in maild.log


def test_sighup_checks_the_config_and_keeps_serving(tmp_path, db_url, db, procs):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    config = daemon_config(tmp_path, db_url)
    procs.append(maild := Maild(config, env={"NOTIFY_SOCKET": str(tmp_path / "notify")}).start())
    assert notify.recv(100) == b"READY=1"
    port = ports_of(config)["smtp"]
    maild.send_signal(signal.SIGHUP)
    maild.wait_for("SIGHUP: config valid and unchanged")
    config.write_text(config.read_text().replace("store_timeout = 1.0", "store_timeout = 2.0"))
    maild.send_signal(signal.SIGHUP)
    maild.wait_for("SIGHUP: config changed (smtp.store_timeout); maild applies its config only at start")
    config.write_text(config.read_text() + "\n[colour]\nname = 'blue'\n")
    maild.send_signal(signal.SIGHUP)
    maild.wait_for("colour: unknown key")
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.sendmail("pat@example.com", ["support@acme.test"], message("After three SIGHUPs"))
    db.wait_processed(1)
    assert maild.stop(signal.SIGINT) == 0
    assert notify.recv(100) == b"STOPPING=1"
    notify.close()


def test_backlog_bound_answers_451_until_the_worker_catches_up(tmp_path, db_url, db):
    from maild import daemon as d
    from maild.app import build
    from maild.config import load

    settings = load(daemon_config(tmp_path, db_url, smtp="max_backlog = 3"))
    app = build(settings)
    engine = d.intake_engine(db_url, 1.0)
    intake = d.Intake(d.db.session_factory(engine), settings.smtp.max_backlog)
    # No drain service: the test drains by hand.
    daemon = d.Daemon(settings, intake, d.smtp.listeners(settings, intake), jobs=[], services=[],
                      closers=[app.close, engine.dispose])
    with InProcess(daemon), smtp_client(tmp_path / "maild.toml") as s:
        for i in range(3):
            s.sendmail("pat@example.com", ["support@acme.test"], message(f"Backlog {i}"))
        s.mail("pat@example.com")
        code, text = s.rcpt("support@acme.test")
        assert (code, text[:5]) == (451, b"4.3.1")
        s.rset()
        d.DrainWorker(app.pipeline, intake, batch=2, interval=1.0).drain(threading.Event())
        s.sendmail("pat@example.com", ["support@acme.test"], message("After the drain"))
    assert db.inbound_subjects() == {f"Backlog {i}": 1 for i in range(3)}
    assert db.pending() == 1


def test_jobs_run_periodically_and_services_stop_on_shutdown(tmp_path, db_url):
    from maild import daemon as d
    from maild.app import build
    from maild.config import load
    from maild.scheduler import Job

    settings = load(daemon_config(tmp_path, db_url))
    runs: list[int] = []
    again = threading.Event()

    def job() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("the first run fails")
        again.set()

    class Service:
        name = "recorder"
        started, stopped = threading.Event(), threading.Event()

        def run(self, stop: threading.Event) -> None:
            self.started.set()
            stop.wait()
            self.stopped.set()

    service = Service()
    app = build(settings)
    engine = d.intake_engine(db_url, 1.0)
    intake = d.Intake(d.db.session_factory(engine), 10)
    daemon = d.Daemon(settings, intake, [], jobs=[Job("tick", 0.05, job)], services=[service],
                      closers=[app.close, engine.dispose])
    with InProcess(daemon):
        assert again.wait(30), "the job did not run again after a failed run"
        assert service.started.is_set() and not service.stopped.is_set()
    assert service.stopped.is_set()


def _in_process_daemon(tmp_path, db_url, services):
    from maild import daemon as d
    from maild.app import build
    from maild.config import load

    config = daemon_config(tmp_path, db_url)
    settings = load(config)
    app = build(settings)
    engine = d.intake_engine(db_url, 1.0)
    intake = d.Intake(d.db.session_factory(engine), 10)
    daemon = d.Daemon(settings, intake, d.smtp.listeners(settings, intake), jobs=[], services=services,
                      closers=[app.close, engine.dispose])
    return config, daemon


class _Slow:
    """A service that starts processes: ready when the test says so."""

    name = "slow"

    def __init__(self, answer: bool = True) -> None:
        self.asked, self.go, self.answer = threading.Event(), threading.Event(), answer

    def run(self, stop: threading.Event) -> None:
        stop.wait()

    def warm(self, timeout: float) -> bool:
        self.asked.set()
        self.go.wait(timeout)
        return self.answer


def test_a_client_that_connects_during_the_start_is_greeted_once_the_services_are_up(tmp_path, db_url, db):
    """Connections are queued while the sender process and parse workers start, not refused
    (an MTA would retry only much later), and the first mail is taken once they are up."""
    import asyncio

    slow = _Slow()
    config, daemon = _in_process_daemon(tmp_path, db_url, [slow])
    serving = threading.Thread(target=lambda: asyncio.run(daemon.serve()), name="daemon")
    serving.start()
    try:
        assert slow.asked.wait(30), "the daemon did not wait for its services"
        early = socket.create_connection(("127.0.0.1", ports_of(config)["smtp"]), timeout=30)
        early.settimeout(0.5)
        with pytest.raises(socket.timeout):
            early.recv(100)  # connected, queued: no greeting while the services start
        assert not daemon.ready.is_set()
        slow.go.set()
        early.settimeout(30)
        assert early.recv(100).startswith(b"220 ")
        early.close()
        assert daemon.ready.wait(30)
        with smtp_client(config) as s:
            s.sendmail("pat@example.com", ["support@acme.test"], message("First after the start"))
    finally:
        slow.go.set()
        daemon.stop()
        serving.join(60)
    assert not serving.is_alive()
    assert db.raw_count() == 1


def test_a_service_that_is_not_ready_in_time_is_logged_and_mail_is_taken(tmp_path, db_url, db, caplog):
    slow = _Slow(answer=False)
    slow.go.set()
    config, daemon = _in_process_daemon(tmp_path, db_url, [slow])
    with caplog.at_level("WARNING", logger="maild.daemon"), InProcess(daemon), smtp_client(config) as s:
        s.sendmail("pat@example.com", ["support@acme.test"], message("Taken anyway"))
    assert "service=slow not ready" in caplog.text
    assert db.raw_count() == 1


@pytest.mark.parametrize(
    "smtp, expected",
    [
        ('lmtp_listen = "0.0.0.0:2424"\nauth_users_env = "MAILD_TEST_USERS"\nauth_require_tls = false',
         "smtp.auth_require_tls = false needs a loopback address; lmtp listens on 0.0.0.0:2424"),
        ('auth_users_env = "MAILD_TEST_NO_SUCH_VARIABLE"', "MAILD_TEST_NO_SUCH_VARIABLE (smtp.auth_users_env)"),
        ("auth_required = true", "smtp.auth_required needs smtp.auth_users_env"),
        ('tls_cert = "missing-cert.pem"\ntls_key = "missing-key.pem"', "smtp.tls_cert/smtp.tls_key: cannot load"),
    ],
)
def test_run_refuses_an_unsafe_or_broken_smtp_config(tmp_path, smtp, expected):
    config = daemon_config(tmp_path, f"sqlite:///{tmp_path / 'maild.db'}", smtp=smtp)
    r = run_maild("run", "-c", str(config), env={"MAILD_TEST_USERS": "a:b"}, timeout=60)
    assert r.returncode == 78, r.stderr
    assert expected in r.stderr.decode()


def test_run_exits_71_when_the_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "maild.toml", f"sqlite:///{tmp_path / 'maild.db'}",
                              extra=f'[smtp]\nlisten = "127.0.0.1:{port}"\n')
        r = run_maild("run", "-c", str(config), timeout=60)
    assert r.returncode == 71, r.stderr
    assert b"cannot listen" in r.stderr


def _rows(db, query) -> list[tuple]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(query)]


def test_one_mail_for_two_mailboxes_by_smtp_and_imap_is_one_interaction(tmp_path, db_url, db, procs):
    """support@ takes SMTP; billing@ is drained from a real Dovecot. A mail to support@ with
    billing@ in Cc arrives both ways, in either order: one raw message, one issue, one
    interaction, one acknowledgement; the later copy is on record."""
    from dovecot import PASSWORD, Dovecot
    from sqlalchemy import func, select

    from daemon_helpers import free_port
    from maild.models import Interaction, Issue, OutboxMessage, RawMessage, RawMessageCopy

    with Dovecot(user="billing") as server:
        boxes = (
            '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\n\n'
            '[[mailbox]]\nname = "billing"\naddress = "billing@acme.test"\ncategory = "billing"\n'
            f'[mailbox.imap]\nhost = "127.0.0.1"\nport = {server.port}\ntls = "none"\nuser = "billing"\n'
            'password_env = "MAILD_TEST_IMAP_PASSWORD"\npoll_interval = 1.0\n'
        )
        extra = (f'[smtp]\nlisten = "127.0.0.1:{free_port()}"\n\n[daemon]\ndrain_interval = 1.0\n\n'
                 f'[outbound]\nrelay = "127.0.0.1:{free_port()}"\n')  # nothing listens: nothing leaves
        config = write_config(tmp_path / "maild.toml", db_url, extra=extra, mailboxes=boxes)
        procs.append(maild := Maild(config, env={"MAILD_TEST_IMAP_PASSWORD": PASSWORD}).start())
        maild.wait_for("first sync")  # what arrives from now on is live mail
        smtp_first = message("Refund for order 1", cc="billing@acme.test", msgid="<order1@example.com>")
        imap_first = message("Refund for order 2", cc="billing@acme.test", msgid="<order2@example.com>")
        with smtp_client(config) as s:
            s.sendmail("pat@example.com", ["support@acme.test"], smtp_first)
        db.wait_processed(1)
        server.append("INBOX", b"Delivered-To: billing@acme.test\r\n" + smtp_first,
                      b"Delivered-To: billing@acme.test\r\n" + imap_first)
        db.wait_processed(2)
        with smtp_client(config) as s:
            s.sendmail("pat@example.com", ["support@acme.test"], imap_first)
        copies = select(RawMessageCopy.mailbox, RawMessageCopy.source).order_by(RawMessageCopy.id)
        deadline = time.monotonic() + 60
        while len(rows := _rows(db, copies)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rows == [("billing", "imap"), ("support", "smtp")]
        db.wait_processed(2)
        assert db.raw_mailboxes() == ["support", "support"]  # the first mailbox in config order
        assert db.inbound_subjects() == {"Refund for order 1": 1, "Refund for order 2": 1}
        assert db.scalar(select(func.count()).select_from(Issue)) == 2
        assert db.scalar(select(func.count()).select_from(Interaction).where(Interaction.raw_message_id.is_not(None))) == 2
        kinds = _rows(db, select(OutboxMessage.kind, func.count()).group_by(OutboxMessage.kind))
        assert dict(kinds)["acknowledgement"] == 2  # one per message, not per copy
        assert db.scalar(select(func.count()).select_from(RawMessage)) == 2
        assert maild.stop() == 0


@pytest.mark.slow
def test_stores_are_answered_while_a_message_is_being_parsed(tmp_path, db_url, db):
    """The write gate is never held while parsing: with SQLite's one writer, a sender would
    otherwise wait for the parse of someone else's hostile mail before its 250."""
    from maild import daemon as d
    from maild.app import build
    from maild.config import load
    from maild.ingest.budget import Budget
    from test_pipeline import parse_or_hang

    mark = tmp_path / "parsing"
    settings = load(daemon_config(tmp_path, db_url))
    app = build(settings)
    app.pipeline.budget = Budget(app.pipeline.own_mail, 8.0, settings.ingest.parse_memory, task=parse_or_hang)
    engine = d.intake_engine(db_url, 1.0)
    intake = d.Intake(d.db.session_factory(engine), settings.smtp.max_backlog, d.WriteGate(exclusive=True))
    drain = d.DrainWorker(app.pipeline, intake, batch=4, interval=1.0)
    daemon = d.Daemon(settings, intake, d.smtp.listeners(settings, intake), jobs=[], services=[drain],
                      closers=[app.close, engine.dispose])
    hostile = message("Hostile", msgid="<hostile@example.com>").replace(
        b"Subject:", b"X-Test-Parse: hang, mark " + str(mark).encode() + b"\r\nSubject:")
    with InProcess(daemon), smtp_client(tmp_path / "maild.toml") as s:
        s.sendmail("eve@example.com", ["support@acme.test"], hostile)
        deadline = time.monotonic() + 60
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mark.exists(), "the hostile message was never parsed"
        for i in range(3):
            s.sendmail("pat@example.com", ["support@acme.test"], message(f"Meanwhile {i}"))
        assert db.pending() == 4  # all answered 250 while the hostile one is still being parsed
        db.wait_processed(4)
    assert db.inbound_subjects() == {f"Meanwhile {i}": 1 for i in range(3)}
    from maild.models import RawMessage
    from sqlalchemy import select

    assert db.scalar(select(RawMessage.error).where(RawMessage.state == "quarantined")) == "too-slow: over 8 s"
