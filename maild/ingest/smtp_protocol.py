"""The SMTP and LMTP protocol as maild speaks it: aiosmtpd's, with the limits
that keep one peer from costing the daemon unbounded time, memory or slots.

Per session: a slot in its listener's pool and, on SMTP, under its client's
address (`max_sessions_per_ip`); a clock from connect (`session_timeout`),
which no NOOP restarts, unlike aiosmtpd's idle timeout; a count of commands
that move no mail (`max_idle_commands`); the transaction's deadline
(`transaction_timeout`); a cap on bytes without a newline; DATA read into a
Spool. What is accepted and stored is the Handler's business (smtp.py), never
this module's.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope

from maild.ingest.smtp_guards import TOO_MANY_FROM_PEER, SessionSlots, Slot, refuse
from maild.ingest.spool import Spool, read_data

log = logging.getLogger("maild.smtp")

TOO_BIG = {"552 Error: Too much mail data", "552 Error: message size exceeds fixed maximum message size"}
DATA_ERRORS = {"552 Error: Too much mail data", "500 Line too long (see RFC5321 4.5.3.1.6)"}
LINE_GUARD = 1 << 20  # bytes without a newline after which a peer is cut off


def peer_and_sender(session, envelope) -> str:
    peer = session.peer[0] if session.peer else "-"
    return f"peer={peer} from=<{envelope.mail_from or ''}>"


class SpooledEnvelope(Envelope):
    """aiosmtpd's envelope, with the message in a Spool instead of `original_content`."""

    spool: Spool | None = None


IDLE_COMMANDS_OVER = b"421 4.7.0 Too many commands without a message, closing connection\r\n"
SESSION_OVER = b"421 4.4.2 Session time limit exceeded, closing connection\r\n"


class LimitedSMTP(SMTP):
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

    def __init__(self, handler: Any, *, slot: Slot, slots: SessionSlots, transaction_timeout: float,
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
                     self.proto, peer_and_sender(self.session, self.envelope), self.session_timeout)
            return
        log.info("refused proto=%s %s code=421 reason=session-timeout seconds=%s",
                 self.proto, peer_and_sender(self.session, self.envelope), self.session_timeout)
        self._hang_up(SESSION_OVER)

    def _idle(self) -> bool:
        """Counts a command that moves no mail; past `max_idle_commands` since the last
        message, the session ends (True)."""
        self._idle_commands += 1
        if self._idle_commands <= self.max_idle_commands:
            return False
        log.info("refused proto=%s %s code=421 reason=too-many-idle-commands limit=%d",
                 self.proto, peer_and_sender(self.session, self.envelope), self.max_idle_commands)
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
                 self.proto, peer_and_sender(self.session, self.envelope), self.transaction_timeout)
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
            log.info("refused proto=%s %s code=552 reason=too-big",
                     self.proto, peer_and_sender(self.session, self.envelope))
            status = f"552 5.3.4 Message too big for this system (max {self.data_size_limit} bytes)"
        if self.proto == "lmtp" and data_error:
            status = "\r\n".join([status] * max(1, len(self._current().rcpt_tos)))
        await super().push(status)

    def data_received(self, data: bytes) -> None:
        nl = data.rfind(b"\n")
        self._unbroken = self._unbroken + len(data) if nl < 0 else len(data) - nl - 1
        if self._unbroken > LINE_GUARD:
            log.info("refused proto=%s %s code=500 reason=line-too-long",
                     self.proto, peer_and_sender(self.session, self.envelope))
            self._hang_up(b"500 5.5.2 Line too long, closing connection\r\n")
            return
        super().data_received(data)


class SmtpServer(LimitedSMTP):
    proto = "smtp"


class LmtpServer(LimitedSMTP, LMTP):
    proto = "lmtp"

    async def smtp_LHLO(self, arg: str) -> None:
        if not self._idle():
            await super().smtp_LHLO(arg)
