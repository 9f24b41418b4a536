"""`maild run` as a real subprocess, and what tests need to talk to it over loopback."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections import Counter
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from sqlalchemy import func, select

from conftest import REPO, SECRET, write_config

ACK_OFF_MAILBOXES = (
    '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\naliases = ["help@acme.test"]\n'
    "acknowledge = false\n\n"
    '[[mailbox]]\nname = "billing"\naddress = "billing@acme.test"\ncategory = "billing"\nacknowledge = false\n'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_config(tmp_path: Path, db_url: str, smtp: str = "", daemon: str = "", lmtp: bool = False) -> Path:
    """A config with free loopback ports; returns its path (ports are in `ports_of`)."""
    lines = [f'listen = "127.0.0.1:{free_port()}"', "store_timeout = 1.0", smtp]
    if lmtp:
        lines.append(f'lmtp_listen = "127.0.0.1:{free_port()}"')
    extra = "[smtp]\n" + "\n".join(x for x in lines if x) + "\n\n[daemon]\ndrain_interval = 1.0\n" + daemon
    return write_config(tmp_path / "maild.toml", db_url, extra=extra, mailboxes=ACK_OFF_MAILBOXES)


def message(subject: str, to: str = "support@acme.test", frm: str = "pat@example.com", body: str = "Hello.",
            msgid: str | None = None, cc: str | None = None, size: int = 0) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, to, subject
    if cc:
        m["Cc"] = cc
    m["Message-ID"] = msgid or f"<{subject.replace(' ', '.')}@example.com>"
    m.set_content(body + ("\n" + "x" * 76) * (size // 78))
    return m.as_bytes(policy=SMTP)  # CRLF line ends, as on the wire


class Maild:
    """One `maild run` subprocess; its stderr goes to a log file the test can read."""

    def __init__(self, config: Path, env: dict | None = None) -> None:
        self.config = config
        self.env = {**os.environ, "MAILD_SECRET": SECRET, **(env or {})}
        self.log_path = config.with_name(f"maild-{time.monotonic_ns()}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, ready: bool = True) -> Maild:
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maild", "run", "-c", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=self.log_file, env=self.env, cwd=REPO,
        )
        if ready:
            self.wait_for("maild.daemon started")
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if self.proc.poll() is not None:
                raise AssertionError(f"maild exited {self.proc.returncode} before {text!r}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the log after {timeout}s:\n{self.log}")
            time.sleep(0.05)

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log_file.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self.log_file.close()


def wait_until(predicate, what: str, timeout: float = 60):
    """predicate()'s first true result, polled every 0.1 s; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def ports_of(config: Path) -> dict[str, int]:
    from maild.config import load

    smtp = load(config).smtp
    out = {"smtp": int(smtp.listen.rsplit(":", 1)[1])}
    if smtp.lmtp_listen:
        out["lmtp"] = int(smtp.lmtp_listen.rsplit(":", 1)[1])
    return out


def smtp_client(config: Path, host: str = "127.0.0.1") -> smtplib.SMTP:
    return smtplib.SMTP(host, ports_of(config)["smtp"], timeout=30)


class Db:
    """Reads the daemon's database the way an operator's query would."""

    def __init__(self, db_url: str) -> None:
        from maild import db

        self.engine = db.make_engine(db_url)

    def close(self) -> None:
        self.engine.dispose()

    def scalar(self, query):
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def pending(self) -> int:
        from maild.models import RawMessage

        return self.scalar(select(func.count()).select_from(RawMessage).where(RawMessage.state == "pending"))

    def raw_count(self) -> int:
        from maild.models import RawMessage

        return self.scalar(select(func.count()).select_from(RawMessage))

    def inbound_subjects(self) -> Counter:
        from maild.models import Interaction

        with self.engine.connect() as conn:
            rows = conn.execute(select(Interaction.subject).where(Interaction.direction == "inbound"))
            return Counter(r[0] for r in rows)

    def raw_mailboxes(self) -> list[str]:
        from maild.models import RawMessage

        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(RawMessage.mailbox).order_by(RawMessage.id))]

    def wait_processed(self, expected: int, timeout: float = 90) -> None:
        """Until `expected` messages are stored and none is pending."""
        deadline = time.monotonic() + timeout
        while not (self.raw_count() >= expected and self.pending() == 0):
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout}s: {self.raw_count()} stored, {self.pending()} pending")
            time.sleep(0.1)


class InProcess:
    """A Daemon served on an event loop in a thread of the test process, stopped on exit."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.error: BaseException | None = None

    def _serve(self) -> None:
        import asyncio

        try:
            asyncio.run(self.daemon.serve())
        except BaseException as exc:
            self.error = exc

    def __enter__(self):
        import threading

        self.thread = threading.Thread(target=self._serve, name="daemon")
        self.thread.start()
        while not self.daemon.ready.wait(0.05):
            if not self.thread.is_alive():
                raise AssertionError(f"the daemon did not start: {self.error!r}")
        return self.daemon

    def __exit__(self, *exc) -> None:
        self.daemon.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the daemon did not stop"
        assert self.error is None, repr(self.error)


class TcpProxy:
    """A loopback TCP forwarder the test can cut (`down`) and restore (`up`): a database going away."""

    def __init__(self, target: tuple[str, int]) -> None:
        import threading

        self.target, self.open, self.sockets = target, True, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def down(self) -> None:
        self.open = False
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sockets = []

    def up(self) -> None:
        self.open = True

    def close(self) -> None:
        self.down()
        self.listener.close()
