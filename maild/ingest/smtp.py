"""The SMTP and LMTP edges (aiosmtpd): check recipients, take the bytes, store, answer.

An edge only routes recipients to mailboxes, hands the bytes to the durable
intake and answers. It never parses a body, never answers 250 before the
intake has returned, and never relays: only the addresses of configured
mailboxes (their aliases and +subaddresses) are accepted.

Resources are capped here, before anything is stored: sessions (a pool per
listener, so SMTP clients never take LMTP's places, and `max_sessions_per_ip`
on SMTP), a session's whole life (`session_timeout`, which no NOOP extends, as
aiosmtpd's idle timeout would be), commands that move no mail
(`max_idle_commands`), the time a transaction may take from MAIL FROM to its
final dot (`transaction_timeout`, which no trickle extends), the memory a
message takes while it arrives (DATA is read by spool.py, not by aiosmtpd) and
the time a sender waits for the store (`store_timeout`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any, Protocol
from collections.abc import Awaitable, Callable, Sequence

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope

from maild.config import MailboxConfig, Settings
from maild.ingest.intake import Accepted, Incoming, header_end
from maild.ingest.smtp_auth import auth_users, authenticator, tls_context
from maild.ingest.smtp_guards import (
    TOO_MANY_FROM_PEER, Refusal, SessionSlots, Slot, address_fault, escape_peer_text, refuse,
)
from maild.ingest.spool import MemoryBudget, Spool, read_data

log = logging.getLogger("maild.smtp")

TOO_BIG = {"552 Error: Too much mail data", "552 Error: message size exceeds fixed maximum message size"}
DATA_ERRORS = {"552 Error: Too much mail data", "500 Line too long (see RFC5321 4.5.3.1.6)"}
LINE_GUARD = 1 << 20  # bytes without a newline after which a peer is cut off
SENDER_FAULT = "501 5.1.7 Sender address must be ASCII, or UTF-8 after SMTPUTF8, without control characters"
RECIPIENT_FAULT = "553 5.1.3 Recipient address must be ASCII, or UTF-8 after SMTPUTF8, without control characters"


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
        names = {n for a in (*recipients, *header_recipients(data)) if (n := self.mailbox_for(a)) is not None}
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


class OutOfMemoryBudget(Exception):
    """The received mail held for stores is at `smtp.max_data_memory`."""


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # a store answered late: its outcome is in the log, not lost as a warning


class Handler:
    """aiosmtpd hooks shared by the SMTP and LMTP listeners."""

    def __init__(self, proto: str, router: Router, intake: Intake, auth: bool = False,
                 store_timeout: float = 5.0, budget: MemoryBudget | None = None) -> None:
        self.proto, self.router, self.intake, self.auth = proto, router, intake, auth
        self.store_timeout, self.budget = store_timeout, budget or MemoryBudget(1 << 30)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses if self.auth else [r for r in responses if not r.startswith("250-AUTH")]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if fault := address_fault(address, envelope.smtp_utf8):
            log.info("refused proto=%s peer=%s from=<%s> code=501 reason=sender-%s",
                     self.proto, session.peer[0] if session.peer else "-", address, fault)
            return SENDER_FAULT
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        who = f"proto={self.proto} {_who(session, envelope)} to=<{address}>"
        if fault := address_fault(address, envelope.smtp_utf8):
            log.info("refused %s code=553 reason=recipient-%s", who, fault)
            return RECIPIENT_FAULT
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

    def _store(self, spool: Spool, sender: str | None, recipients: tuple[str, ...],
               deadline: float) -> tuple[str, Accepted]:
        """In an intake thread: the spooled message read back (within the memory budget) and stored."""
        try:
            held = self.budget.acquire(spool.size, max(0.0, deadline - time.monotonic()))
            if held is None:
                raise OutOfMemoryBudget(f"smtp.max_data_memory ({self.budget.total} bytes) in use")
            try:
                data = spool.read()
                spool.close()
                mailbox = self.router.choose(data, recipients)
                return mailbox, self.intake.store(Incoming(data, mailbox, self.proto, sender, recipients))
            finally:
                self.budget.release(held)
        finally:
            spool.close()

    async def handle_DATA(self, server, session, envelope):
        """Store, waiting at most `store_timeout` s; a store still running then may commit later,
        and the sender's retry is recognised as the same message."""
        who = f"proto={self.proto} {_who(session, envelope)} to={','.join(envelope.rcpt_tos)}"
        spool: Spool = envelope.spool
        deadline = time.monotonic() + self.store_timeout
        task = asyncio.ensure_future(
            self.intake.call(self._store, spool, envelope.mail_from, tuple(envelope.rcpt_tos), deadline)
        )
        task.add_done_callback(_retrieve)
        await asyncio.wait({task}, timeout=self.store_timeout)
        exc = task.exception() if task.done() else TimeoutError(f"no commit within {self.store_timeout}s")
        if exc is not None:
            if task.done():
                spool.close()
            error = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            log.warning("refused %s code=451 reason=not-stored error=%s", who, error)
            status = ("451 4.3.1 Too much mail arriving at once, try again later"
                      if isinstance(exc, OutOfMemoryBudget) else
                      "451 4.3.0 Cannot store the message now, try again later")
        else:
            mailbox, accepted = task.result()
            dup = "yes" if accepted.duplicate else "no"
            log.info("accepted %s mailbox=%s raw=%s size=%d duplicate=%s",
                     who, mailbox, accepted.raw_id, spool.size, dup)
            status = f"250 2.0.0 OK stored as {accepted.raw_id}"
        # LMTP answers once per recipient; all share the one stored copy.
        return "\r\n".join([status] * len(envelope.rcpt_tos)) if self.proto == "lmtp" else status

    async def handle_exception(self, error):
        log.exception("smtp session error proto=%s", self.proto)
        return "451 4.3.0 Internal error, try again later"


class SpooledEnvelope(Envelope):
    """aiosmtpd's envelope, with the message in a Spool instead of `original_content`."""

    spool: Spool | None = None


IDLE_COMMANDS_OVER = b"421 4.7.0 Too many commands without a message, closing connection\r\n"
SESSION_OVER = b"421 4.4.2 Session time limit exceeded, closing connection\r\n"


class _Precise(SMTP):
    """Protocol tweaks: enhanced codes for oversize mail, per-recipient DATA errors
    for LMTP, a cap on bytes without a newline (aiosmtpd would keep them), a
    session slot and the client's cap, the session and transaction deadlines,
    a cap on commands that move no mail, and DATA read into a Spool."""

    proto = "smtp"
    _unbroken = 0
    _idle_commands = 0
    _expiry: asyncio.TimerHandle | None = None
    _session_clock: asyncio.TimerHandle | None = None
    _in_data = _overdue = _refused = False

    def __init__(self, handler: Handler, *, slot: Slot, slots: SessionSlots, transaction_timeout: float,
                 session_timeout: float, max_idle_commands: int, spool_threshold: int, **options: Any) -> None:
        self.slot, self.slots, self.spool_threshold = slot, slots, spool_threshold
        self.transaction_timeout, self.session_timeout = transaction_timeout, session_timeout
        self.max_idle_commands = max_idle_commands
        weakref.finalize(self, slot.release)  # a protocol asyncio made but never connected
        super().__init__(handler, **options)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # the connection itself (STARTTLS calls again with its TLS transport)
            peer = transport.get_extra_info("peername")
            if not self.slots.admit(self.slot, peer[0] if isinstance(peer, tuple) else "-"):
                self._refused = True
                self.slot.release()
                refuse(transport, self.proto, "too-many-sessions-per-ip", self.slots.per_peer or 0, TOO_MANY_FROM_PEER)
                return
            self._session_clock = self.loop.call_later(self.session_timeout, self._session_expired)
        super().connection_made(transport)

    def _session_expired(self) -> None:
        self._session_clock = None
        if self._in_data:  # the message in DATA is finished first (transaction_timeout bounds it)
            self._overdue = True
            log.info("overdue proto=%s %s reason=session-timeout in-data seconds=%s: 421 after its answer",
                     self.proto, _who(self.session, self.envelope), self.session_timeout)
            return
        log.info("refused proto=%s %s code=421 reason=session-timeout seconds=%s",
                 self.proto, _who(self.session, self.envelope), self.session_timeout)
        self._hang_up(SESSION_OVER)

    def _idle(self) -> bool:
        """Counts a command that moves no mail; past `max_idle_commands` since the last
        message, the session ends (True)."""
        self._idle_commands += 1
        if self._idle_commands <= self.max_idle_commands:
            return False
        log.info("refused proto=%s %s code=421 reason=too-many-idle-commands limit=%d",
                 self.proto, _who(self.session, self.envelope), self.max_idle_commands)
        self._hang_up(IDLE_COMMANDS_OVER)
        return True

    async def smtp_NOOP(self, arg: str) -> None:
        if not self._idle():
            await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if not self._idle():
            await super().smtp_RSET(arg)

    async def smtp_HELO(self, hostname: str) -> None:
        if not self._idle():
            await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str) -> None:
        if not self._idle():
            await super().smtp_EHLO(hostname)

    async def smtp_HELP(self, arg: str) -> None:
        if not self._idle():
            await super().smtp_HELP(arg)

    async def smtp_EXPN(self, arg: str) -> None:
        if not self._idle():
            await super().smtp_EXPN(arg)

    def _create_envelope(self) -> Envelope:
        return SpooledEnvelope()

    def _current(self) -> SpooledEnvelope:
        """The transaction's envelope (aiosmtpd makes one per session and transaction)."""
        assert isinstance(self.envelope, SpooledEnvelope)
        return self.envelope

    def _hang_up(self, reply: bytes) -> None:
        if isinstance(self.transport, asyncio.WriteTransport) and not self.transport.is_closing():
            self.transport.write(reply)
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:  # never started: aiosmtpd has nothing to clean up
            return
        if self._session_clock is not None:
            self._session_clock.cancel()
            self._session_clock = None
        self._set_post_data_state()
        self.slot.release()
        super().connection_lost(error)

    def _set_post_data_state(self) -> None:  # aiosmtpd: after DATA, RSET, HELO/EHLO
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        super()._set_post_data_state()

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(arg)
        if self._current().mail_from is not None and self._expiry is None:
            self._expiry = self.loop.call_later(self.transaction_timeout, self._transaction_expired)

    def _transaction_expired(self) -> None:
        self._expiry = None
        log.info("refused proto=%s %s code=421 reason=transaction-timeout seconds=%s",
                 self.proto, _who(self.session, self.envelope), self.transaction_timeout)
        self._hang_up(b"421 4.4.2 Transaction time limit exceeded, closing connection\r\n")

    async def smtp_VRFY(self, arg: str | None) -> None:  # aiosmtpd echoes a bad address undecoded
        if not self._idle() and not await self.check_auth_needed("VRFY"):
            await self.push("252 2.5.0 Cannot VRFY; send the message" if arg else "501 5.5.4 Syntax: VRFY <address>")

    async def smtp_DATA(self, arg: str | None) -> None:
        """aiosmtpd's DATA, with the data going to a Spool (see spool.py for why)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self._current()
        if not envelope.rcpt_tos or arg:
            await self.push("501 5.5.4 Syntax: DATA" if arg else "503 5.5.1 Error: need RCPT command")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self._in_data = True
        try:
            await self._take_data(envelope)
        finally:
            self._in_data = False
        if self._overdue:
            self._session_expired()

    async def _take_data(self, envelope: SpooledEnvelope) -> None:
        """From 354 to the answer after the final dot."""
        spool = Spool(self.spool_threshold)
        try:
            fault = await read_data(self._reader, spool, self.data_size_limit)
        except BaseException:
            spool.close()
            raise
        if self._expiry is not None:  # the transaction's time ends at the final dot
            self._expiry.cancel()
            self._expiry = None
        if fault is not None:
            spool.close()
            await self.push("552 Error: Too much mail data" if fault == "too-big" else
                            "500 Line too long (see RFC5321 4.5.3.1.6)")
            self._set_post_data_state()
            return
        self._idle_commands = 0  # a message came: the commands before it were its own
        envelope.spool = spool
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def push(self, status):
        data_error = status in DATA_ERRORS
        if status in TOO_BIG:
            log.info("refused proto=%s %s code=552 reason=too-big", self.proto, _who(self.session, self.envelope))
            status = f"552 5.3.4 Message too big for this system (max {self.data_size_limit} bytes)"
        if self.proto == "lmtp" and data_error:
            status = "\r\n".join([status] * max(1, len(self._current().rcpt_tos)))
        await super().push(status)

    def data_received(self, data: bytes) -> None:
        nl = data.rfind(b"\n")
        self._unbroken = self._unbroken + len(data) if nl < 0 else len(data) - nl - 1
        if self._unbroken > LINE_GUARD:
            log.info("refused proto=%s %s code=500 reason=line-too-long", self.proto, _who(self.session, self.envelope))
            self._hang_up(b"500 5.5.2 Line too long, closing connection\r\n")
            return
        super().data_received(data)


class SmtpServer(_Precise):
    proto = "smtp"


class LmtpServer(_Precise, LMTP):
    proto = "lmtp"

    async def smtp_LHLO(self, arg: str) -> None:
        if not self._idle():
            await super().smtp_LHLO(arg)


@dataclass(frozen=True)
class Listener:
    proto: str
    address: str
    factory: Callable[[], asyncio.Protocol]  # for loop.create_server


def listeners(settings: Settings, intake: Intake) -> list[Listener]:
    """The SMTP listener and, when configured, the LMTP one."""
    cfg = settings.smtp
    wanted = [("smtp", cfg.listen)] + ([("lmtp", cfg.lmtp_listen)] if cfg.lmtp_listen else [])
    users, tls = auth_users(settings, wanted), tls_context(settings)
    options = dict(
        data_size_limit=cfg.max_message_size, hostname=socket.getfqdn(), enable_SMTPUTF8=True,
        tls_context=tls, auth_require_tls=cfg.auth_require_tls, auth_required=cfg.auth_required,
        authenticator=authenticator(users or {}), transaction_timeout=cfg.transaction_timeout,
        session_timeout=cfg.session_timeout, max_idle_commands=cfg.max_idle_commands,
        spool_threshold=cfg.spool_threshold,
    )
    escape_peer_text(log, logging.getLogger("mail.log"))  # aiosmtpd's logger
    router, budget = Router(settings.mailbox), MemoryBudget(cfg.max_data_memory)
    # The MTA's LMTP hand-off comes from one (often loopback) address: its own pool, no per-client cap.
    pools = {"smtp": SessionSlots("smtp", cfg.max_sessions, cfg.max_sessions_per_ip),
             "lmtp": SessionSlots("lmtp", cfg.max_lmtp_sessions)}
    out = []
    for proto, address in wanted:
        handler = Handler(proto, router, intake, users is not None, cfg.store_timeout, budget)
        server = LmtpServer if proto == "lmtp" else SmtpServer
        out.append(Listener(proto, address, _factory(server, handler, pools[proto], options)))
    return out


def _factory(server: type[_Precise], handler: Handler, slots: SessionSlots,
             options: dict[str, Any]) -> Callable[[], asyncio.Protocol]:
    """A new session when the listener's pool has a slot; otherwise a Refusal (421)."""

    def make() -> asyncio.Protocol:
        slot = slots.take()
        if slot is None:
            return Refusal(slots.proto, slots.limit)
        return server(handler, slot=slot, slots=slots, **options)

    return make
