"""The SMTP and LMTP edges (aiosmtpd): check recipients, take the bytes, store, answer.

An edge only routes recipients to mailboxes, hands the bytes to the durable
intake and answers. It never parses a body, never answers 250 before the
intake has returned, and never relays: only the addresses of configured
mailboxes (their aliases and +subaddresses) are accepted.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from ipaddress import ip_address
from typing import Any, Protocol
from collections.abc import Awaitable, Callable, Sequence

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from maild.config import ConfigError, MailboxConfig, Settings, split_hostport
from maild.ingest.intake import Accepted, Incoming, header_end

log = logging.getLogger("maild.smtp")

TOO_BIG = {"552 Error: Too much mail data", "552 Error: message size exceeds fixed maximum message size"}
DATA_ERRORS = {"552 Error: Too much mail data", "500 Line too long (see RFC5321 4.5.3.1.6)"}
LINE_GUARD = 1 << 20  # bytes without a newline after which a peer is cut off


class Intake(Protocol):
    """What an edge needs from the daemon's side of the durable intake."""

    def full(self) -> bool: ...
    def store(self, item: Incoming) -> Accepted: ...  # blocking; durable once it returns
    def call(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...  # off the event loop


class Router:
    """Recipient address -> mailbox name, and the one rule for mail to several mailboxes.

    Rule: a message is stored once, under the first mailbox in config order
    among its envelope recipients and its To/Cc addresses. The choice depends
    on the message alone, so a copy that arrives again in another transaction,
    or for another of those addresses, is recognised as the same message.
    """

    def __init__(self, mailboxes: Sequence[MailboxConfig]) -> None:
        self.by_address = {a: m.name for m in mailboxes for a in m.all_addresses}
        self.order = {m.name: i for i, m in enumerate(mailboxes)}

    def mailbox_for(self, address: str) -> str | None:
        local, at, domain = address.strip().strip("<>").lower().rpartition("@")
        while at:
            if (name := self.by_address.get(f"{local}@{domain}")) is not None:
                return name
            if "+" not in local:
                return None
            local = local.rpartition("+")[0]  # support+TOKEN@ is support@
        return None

    def choose(self, data: bytes, recipients: Sequence[str]) -> str:
        names = {self.mailbox_for(a) for a in (*recipients, *header_recipients(data))} - {None}
        return min(names, key=self.order.__getitem__)


def header_recipients(data: bytes) -> list[str]:
    """The To and Cc addresses of a message, from its (bounded) header block."""
    end = header_end(data, 65536)
    try:
        head = BytesHeaderParser(policy=compat32).parsebytes(data[: 65536 if end is None else end])
        fields = [str(v) for k in ("to", "cc") for v in head.get_all(k, [])]
        return [addr for _, addr in getaddresses(fields) if "@" in addr]
    except Exception:
        return []


def _who(session, envelope) -> str:
    peer = session.peer[0] if session.peer else "-"
    return f"peer={peer} from=<{envelope.mail_from or ''}>"


class Handler:
    """aiosmtpd hooks shared by the SMTP and LMTP listeners."""

    def __init__(self, proto: str, router: Router, intake: Intake, auth: bool = False) -> None:
        self.proto, self.router, self.intake, self.auth = proto, router, intake, auth

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses if self.auth else [r for r in responses if not r.startswith("250-AUTH")]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        who = f"proto={self.proto} {_who(session, envelope)} to=<{address}>"
        if self.router.mailbox_for(address) is None:
            log.info("refused %s code=550 reason=unknown-recipient", who)
            return f"550 5.1.1 <{address}>: no such mailbox here"
        # Checked once per transaction, so LMTP never answers its recipients differently.
        if not envelope.rcpt_tos and self.intake.full():
            log.warning("refused %s code=451 reason=backlog-full", who)
            return "451 4.3.1 Too much mail waiting to be processed, try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    def _store(self, envelope) -> tuple[str, Accepted]:
        mailbox = self.router.choose(envelope.original_content, envelope.rcpt_tos)
        item = Incoming(envelope.original_content, mailbox, self.proto, envelope.mail_from, tuple(envelope.rcpt_tos))
        return mailbox, self.intake.store(item)

    async def handle_DATA(self, server, session, envelope):
        who = f"proto={self.proto} {_who(session, envelope)} to={','.join(envelope.rcpt_tos)}"
        try:
            mailbox, accepted = await self.intake.call(self._store, envelope)
        except Exception as exc:
            error = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            log.warning("refused %s code=451 reason=not-stored error=%s", who, error)
            status = "451 4.3.0 Cannot store the message now, try again later"
        else:
            dup = "yes" if accepted.duplicate else "no"
            log.info("accepted %s mailbox=%s raw=%s size=%d duplicate=%s",
                     who, mailbox, accepted.raw_id, len(envelope.original_content), dup)
            status = f"250 2.0.0 OK stored as {accepted.raw_id}"
        # LMTP answers once per recipient; all share the one stored copy.
        return "\r\n".join([status] * len(envelope.rcpt_tos)) if self.proto == "lmtp" else status

    async def handle_exception(self, error):
        log.exception("smtp session error proto=%s", self.proto)
        return "451 4.3.0 Internal error, try again later"


class _Precise:
    """Protocol tweaks: enhanced codes for oversize mail, per-recipient DATA errors
    for LMTP, and a cap on bytes without a newline (aiosmtpd would keep them)."""

    _unbroken = 0

    async def push(self, status):
        data_error = status in DATA_ERRORS
        if status in TOO_BIG:
            log.info("refused proto=%s %s code=552 reason=too-big", self.proto, _who(self.session, self.envelope))
            status = f"552 5.3.4 Message too big for this system (max {self.data_size_limit} bytes)"
        if self.proto == "lmtp" and data_error:
            status = "\r\n".join([status] * max(1, len(self.envelope.rcpt_tos)))
        await super().push(status)

    def data_received(self, data: bytes) -> None:
        nl = data.rfind(b"\n")
        self._unbroken = self._unbroken + len(data) if nl < 0 else len(data) - nl - 1
        if self._unbroken > LINE_GUARD:
            log.info("refused proto=%s %s code=500 reason=line-too-long", self.proto, _who(self.session, self.envelope))
            self.transport.write(b"500 5.5.2 Line too long, closing connection\r\n")
            self.transport.close()
            return
        super().data_received(data)


class SmtpServer(_Precise, SMTP):
    proto = "smtp"


class LmtpServer(_Precise, LMTP):
    proto = "lmtp"


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def authenticator(users: dict[str, str]):
    """AUTH PLAIN/LOGIN against the configured users, compared in constant time."""

    def check(server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = False
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            want = users.get(login, "")
            ok = bool(want) & hmac.compare_digest(want.encode(), auth_data.password)
            log.info("auth user=%s peer=%s ok=%s", login, session.peer[0] if session.peer else "-", ok)
        return AuthResult(success=ok, handled=False)

    return check


@dataclass(frozen=True)
class Listener:
    proto: str
    address: str
    factory: Callable[[], asyncio.Protocol]  # for loop.create_server


def _auth_users(settings: Settings) -> dict[str, str] | None:
    cfg = settings.smtp
    if cfg.auth_users_env is None:
        if cfg.auth_required:
            raise ConfigError("smtp.auth_required needs smtp.auth_users_env")
        return None
    value = os.environ.get(cfg.auth_users_env, "")
    users = dict(p.strip().split(":", 1) for p in value.split(",") if ":" in p)
    if not users:
        raise ConfigError(
            f"environment variable {cfg.auth_users_env} (smtp.auth_users_env) must hold user:password[,...]"
        )
    return users


def _loopback(address: str) -> bool:
    host, _ = split_hostport(address)
    try:
        return host == "localhost" or ip_address(host).is_loopback
    except ValueError:
        return False


def listeners(settings: Settings, intake: Intake) -> list[Listener]:
    """The SMTP listener and, when configured, the LMTP one."""
    cfg, users = settings.smtp, _auth_users(settings)
    wanted = [("smtp", cfg.listen)] + ([("lmtp", cfg.lmtp_listen)] if cfg.lmtp_listen else [])
    if users is not None and not cfg.auth_require_tls:
        for proto, address in wanted:
            if not _loopback(address):
                raise ConfigError(f"smtp.auth_require_tls = false needs a loopback address; {proto} listens on {address}")
    try:
        tls = tls_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"smtp.tls_cert/smtp.tls_key: cannot load: {exc}") from None
    options = dict(
        data_size_limit=cfg.max_message_size, hostname=socket.getfqdn(), enable_SMTPUTF8=True,
        tls_context=tls, auth_require_tls=cfg.auth_require_tls, auth_required=cfg.auth_required,
        authenticator=authenticator(users or {}),
    )
    router = Router(settings.mailbox)
    return [
        Listener(proto, address, functools.partial(
            LmtpServer if proto == "lmtp" else SmtpServer, Handler(proto, router, intake, users is not None), **options
        ))
        for proto, address in wanted
    ]
