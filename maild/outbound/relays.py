"""Where outgoing mail goes: an SMTP relay, or a local Maildir or mbox.

A relay takes one message at a time and answers per recipient: `{address:
(code, text)}`, 2xx delivered, 4xx try again later, 5xx refused for good. An
SMTP conversation is opened on first use and reused for the next message
(RSET only after a transaction left half way); a local relay (`maildir:PATH`, `mbox:PATH`, for a first
run and staging) writes the message durably and counts it as delivered to
every recipient. This module never touches the database.

The Maildir writer is by hand: the stdlib's `mailbox.Maildir.add` renames into
new/ without an fsync, so a crash could leave an empty message there. The mbox
writer uses `mailbox.mbox` (From_ line, >From quoting, locking) but never reads
the file back, so a large staging mbox costs nothing per message.
"""

from __future__ import annotations

import mailbox
import os
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from maild.config import Settings
from maild.config_base import split_hostport

Results = dict[str, tuple[int, str]]


class Temporary(Exception):
    """The relay could not take the mail now; try again later."""


class Permanent(Exception):
    """The relay refused the mail for good."""


class ConnectionLost(Temporary):
    """The relay went away or could not be reached."""


class LostInData(ConnectionLost):
    """The connection was lost while or after the message was sent, before the
    relay's answer: the relay may have taken it. Counted like a crash mid-send."""


def reply_text(resp: bytes | str) -> str:
    """An SMTP reply as words: decoded, on one line."""
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    return " ".join(text.split())[:300]


def refusal(code: int, resp: bytes | str, what: str) -> Exception:
    """The exception for a negative reply, in words ("the relay refused MAIL FROM: 550 ...")."""
    return (Permanent if code >= 500 else Temporary)(f"the relay refused {what}: {code} {reply_text(resp)}")


@dataclass(frozen=True)
class RelayConfig:
    kind: str  # smtp, maildir or mbox
    host: str = ""
    port: int = 0
    path: Path | None = None
    starttls: bool = False
    user: str | None = None
    password: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayConfig:
        o = settings.outbound
        kind, _, path = o.relay.partition(":")
        if kind in ("maildir", "mbox"):  # relative to the working directory, like the SQLite path
            return cls(kind, path=Path(path).absolute(), timeout=o.timeout)
        host, port = split_hostport(o.relay)
        user = os.environ.get(o.user_env) if o.user_env else None
        password = os.environ.get(o.password_env) if o.password_env else None
        return cls("smtp", host, port, None, o.starttls, user, password, o.timeout)


class Relay(Protocol):
    def send(self, envelope_from: str, recipients: list[str], data: bytes) -> Results: ...

    def close(self) -> None: ...


class SmtpRelay:
    """One SMTP conversation, reused across messages; reconnects when it was lost."""

    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.smtp: smtplib.SMTP | None = None
        self.used = False

    def _connect(self) -> smtplib.SMTP:
        try:
            smtp = smtplib.SMTP(self.cfg.host, self.cfg.port, timeout=self.cfg.timeout)
            smtp.ehlo_or_helo_if_needed()
            if self.cfg.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.cfg.user:
                smtp.login(self.cfg.user, self.cfg.password or "")
        except smtplib.SMTPResponseException as exc:
            raise refusal(exc.smtp_code, exc.smtp_error, "the connection") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise ConnectionLost(f"relay {self.cfg.host}:{self.cfg.port} unreachable: {exc}") from exc
        self.used = False
        return smtp

    def _ready(self) -> smtplib.SMTP:
        """A conversation at the start of a transaction: a fresh one, the last one after a completed
        transaction (the relay's answer to DATA ends it: RFC 5321 4.1.1.4), or after RSET when the
        last transaction stopped half way (every recipient refused)."""
        if self.smtp is not None and self.used:
            try:
                if self.smtp.rset()[0] == 250:
                    self.used = False
                    return self.smtp
            except (OSError, smtplib.SMTPException):
                pass
            self.close()  # nothing was sent on it yet: a new conversation is safe
        if self.smtp is None:
            self.smtp = self._connect()
        return self.smtp

    def send(self, envelope_from: str, recipients: list[str], data: bytes) -> Results:
        smtp = self._ready()
        self.used = True
        in_data = False
        try:
            options = [f"SIZE={len(data)}"] if smtp.has_extn("size") else []
            code, resp = smtp.mail(envelope_from, options)
            if code != 250:
                raise refusal(code, resp, f"MAIL FROM <{envelope_from}>")
            results: Results = {}
            for rcpt in recipients:
                code, resp = smtp.rcpt(rcpt)
                results[rcpt] = (code, reply_text(resp))
            accepted = [r for r in recipients if results[r][0] in (250, 251)]
            if not accepted:
                return results  # a transaction left open: the next one starts with RSET
            in_data = True
            code, resp = smtp.data(data)
            self.used = False  # the answer to DATA ends the transaction, whatever it says
            if code != 250:
                raise refusal(code, resp, "the message")
            return results | {r: (code, reply_text(resp)) for r in accepted}
        except smtplib.SMTPDataError as exc:
            raise refusal(exc.smtp_code, exc.smtp_error, "DATA") from exc
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            lost = LostInData if in_data else ConnectionLost
            raise lost(f"connection to the relay lost: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MaildirRelay:
    """Each message becomes a file in PATH/new: written to tmp/, fsync'd, renamed."""

    _counter = 0
    _lock = threading.Lock()

    def __init__(self, cfg: RelayConfig) -> None:
        assert cfg.path is not None
        self.root = cfg.path
        try:
            for sub in ("tmp", "new", "cur"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Temporary(f"cannot create the Maildir {self.root}: {exc}") from exc

    def _name(self) -> str:
        with MaildirRelay._lock:
            MaildirRelay._counter += 1
            n = MaildirRelay._counter
        return f"{time.time_ns()}.M{os.getpid()}Q{n}.{socket.gethostname().replace('/', '_').replace(':', '_')}"

    def send(self, envelope_from: str, recipients: list[str], data: bytes) -> Results:
        name = self._name()
        tmp, new = self.root / "tmp" / name, self.root / "new" / name
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, new)
            _fsync_dir(new.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise Temporary(f"cannot write to the Maildir {self.root}: {exc}") from exc
        return {r: (250, f"written to {new}") for r in recipients}

    def close(self) -> None:
        pass


class _AppendOnlyMbox(mailbox.mbox):
    """An mbox opened only to append: the existing messages are never read."""

    def _generate_toc(self) -> None:
        self._toc, self._next_key = dict[int, tuple[int, int]](), 0


class MboxRelay:
    """Each message is appended to the mbox file PATH, locked and fsync'd."""

    _lock = threading.Lock()  # the file lock does not exclude this process's other threads

    def __init__(self, cfg: RelayConfig) -> None:
        assert cfg.path is not None
        self.path = cfg.path

    def send(self, envelope_from: str, recipients: list[str], data: bytes) -> Results:
        message = mailbox.mboxMessage(data)
        message.set_from(envelope_from or "MAILER-DAEMON", time.gmtime())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with MboxRelay._lock:
                box = _AppendOnlyMbox(str(self.path), create=True)
                try:
                    box.lock()
                    try:
                        box.add(message)
                        box.flush()  # appends only: a flush and an fsync, no rewrite
                    finally:
                        box.unlock()
                finally:
                    box.close()
        except (OSError, mailbox.Error) as exc:
            raise Temporary(f"cannot append to the mbox {self.path}: {exc}") from exc
        return {r: (250, f"appended to {self.path}") for r in recipients}

    def close(self) -> None:
        pass


def open_relay(cfg: RelayConfig) -> Relay:
    if cfg.kind == "maildir":
        return MaildirRelay(cfg)
    if cfg.kind == "mbox":
        return MboxRelay(cfg)
    return SmtpRelay(cfg)
