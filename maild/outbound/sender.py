"""The outbox sender: delivers queued mail through the configured relay.

A row is marked `sending` (committed) before the relay sees it and `sent`
right after the relay's 250, so a crash in between leaves it `sending`; such a
row is sent again once `sending_timeout` has passed, with the same bytes and
Message-ID: at most one resend, never a different copy. Temporary failures
(4xx, relay unreachable) back off exponentially; 5xx or the deadline fail the
row for good, and the failure is recorded on its issue.
"""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from collections.abc import Callable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker, undefer

from maild.config import Settings, split_hostport
from maild.models import OutboxMessage, utcnow
from maild.timefmt import aware

log = logging.getLogger("maild.outbound")

FailureHook = Callable[[Session, OutboxMessage], None]


class Temporary(Exception):
    """The relay could not take the mail now; try again later."""


class Permanent(Exception):
    """The relay refused the mail for good."""


class ConnectionLost(Temporary):
    """The relay went away: nothing more can be sent in this conversation."""


@dataclass(frozen=True)
class RelayConfig:
    host: str
    port: int
    starttls: bool
    user: str | None
    password: str | None
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayConfig:
        o = settings.outbound
        host, port = split_hostport(o.relay)
        user = os.environ.get(o.user_env) if o.user_env else None
        password = os.environ.get(o.password_env) if o.password_env else None
        return cls(host, port, o.starttls, user, password, o.timeout)


def _classify_error(exc: Exception) -> Exception:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        kind = Permanent if codes and all(c >= 500 for c in codes) else Temporary
        return kind(f"recipients refused: {exc.recipients}")
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return (Permanent if exc.smtp_code >= 500 else Temporary)(f"{exc.smtp_code} {text}")
    return ConnectionLost(f"{type(exc).__name__}: {exc}")


class Relay:
    """One SMTP conversation with the relay, for a run of the sender."""

    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.smtp: smtplib.SMTP | None = None

    def __enter__(self) -> Relay:
        try:
            self.smtp = smtplib.SMTP(self.cfg.host, self.cfg.port, timeout=self.cfg.timeout)
            if self.cfg.starttls:
                self.smtp.starttls(context=ssl.create_default_context())
            if self.cfg.user:
                self.smtp.login(self.cfg.user, self.cfg.password or "")
        except (OSError, smtplib.SMTPException) as exc:
            raise _classify_error(exc) from exc
        return self

    def send(self, envelope_from: str, recipients: list[str], data: bytes) -> dict:
        try:
            return self.smtp.sendmail(envelope_from, recipients, data)
        except (OSError, smtplib.SMTPException) as exc:
            raise _classify_error(exc) from exc

    def __exit__(self, *exc) -> None:
        try:
            self.smtp.quit()
        except (OSError, smtplib.SMTPException):
            self.smtp.close()


class Sender:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], on_failure: FailureHook | None = None):
        self.relay = RelayConfig.from_settings(settings)
        self.sessions = sessions
        self.on_failure = on_failure
        o = settings.outbound
        self.retry_base, self.retry_max = o.retry_base, o.retry_max
        self.sending_timeout = timedelta(seconds=o.sending_timeout)

    def _claim(self, now: datetime, limit: int) -> list[int]:
        """Mark due rows `sending` and commit, before the relay sees any of them."""
        stale = now - self.sending_timeout
        with self.sessions() as session, session.begin():
            rows = session.scalars(
                select(OutboxMessage)
                .where(or_(
                    (OutboxMessage.status == "queued") & (OutboxMessage.next_attempt_at <= now),
                    (OutboxMessage.status == "sending") & (OutboxMessage.sending_since < stale),
                ))
                .order_by(OutboxMessage.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.status, row.sending_since, row.attempts = "sending", now, row.attempts + 1
            return [r.id for r in rows]

    def _settle(self, row_id: int, error: Exception | None, now: datetime) -> str:
        with self.sessions() as session, session.begin():
            row = session.get(OutboxMessage, row_id)
            if error is None:
                row.status, row.sent_at, row.last_error = "sent", utcnow(), None
            elif isinstance(error, Temporary) and now < aware(row.deadline_at):
                delay = min(self.retry_base * 2 ** max(row.attempts - 1, 0), self.retry_max)
                row.status, row.next_attempt_at, row.last_error = "queued", now + timedelta(seconds=delay), str(error)
            else:
                row.status, row.last_error = "failed", str(error)
                if self.on_failure is not None:
                    self.on_failure(session, row)
            log.info("outbox id=%s kind=%s status=%s attempts=%s error=%s",
                     row.id, row.kind, row.status, row.attempts, row.last_error)
            return row.status

    def run_once(self, now: datetime | None = None, limit: int = 100) -> Counter:
        """Deliver what is due; returns how many rows ended in each status."""
        now = now or utcnow()
        ids = self._claim(now, limit)
        counts: Counter = Counter()
        if not ids:
            return counts
        pending = list(ids)
        try:
            with Relay(self.relay) as relay:
                while pending:
                    row_id = pending[0]
                    with self.sessions() as session:
                        row = session.scalars(
                            select(OutboxMessage).options(undefer(OutboxMessage.data)).where(OutboxMessage.id == row_id)
                        ).one()
                        envelope = (row.envelope_from, list(row.recipients), row.data)
                    try:
                        relay.send(*envelope)
                        error = None
                    except ConnectionLost:
                        raise
                    except (Permanent, Temporary) as exc:
                        error = exc
                    counts[self._settle(row_id, error, now)] += 1
                    pending.pop(0)
        except Temporary as exc:  # could not connect, or the connection was lost
            for row_id in pending:
                counts[self._settle(row_id, exc, now)] += 1
        return counts
