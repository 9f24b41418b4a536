"""The SMTP and LMTP edges (aiosmtpd): check recipients, take the bytes, store, answer.

An edge only routes recipients to mailboxes, hands the bytes to the durable
intake and answers. It never parses a body, never answers 250 before the
intake has returned, and never relays: only the addresses of configured
mailboxes (their aliases and +subaddresses) are accepted.

Resources are capped before anything is stored: per session by the protocol
(smtp_protocol.py: slots, the session's and the transaction's time, commands
that move no mail, DATA into a spool), and here the memory held for stores
(`max_data_memory`) and the time a sender waits for the store
(`store_timeout`). Each listener has its own pool of sessions, so SMTP
clients never take the places the MTA's LMTP hand-off needs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any, Protocol
from collections.abc import Awaitable, Callable, Sequence

from maild.config import MailboxConfig, Settings
from maild.ingest.intake import Accepted, Incoming, header_end
from maild.ingest.smtp_auth import auth_users, authenticator, tls_context
from maild.ingest.smtp_guards import Refusal, SessionSlots, address_fault, escape_peer_text
from maild.ingest.smtp_protocol import LimitedSMTP, LmtpServer, SmtpServer, peer_and_sender
from maild.ingest.spool import MemoryBudget, Spool

log = logging.getLogger("maild.smtp")

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
        who = f"proto={self.proto} {peer_and_sender(session, envelope)} to=<{address}>"
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
        who = f"proto={self.proto} {peer_and_sender(session, envelope)} to={','.join(envelope.rcpt_tos)}"
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


def _factory(server: type[LimitedSMTP], handler: Handler, slots: SessionSlots,
             options: dict[str, Any]) -> Callable[[], asyncio.Protocol]:
    """A new session when the listener's pool has a slot; otherwise a Refusal (421)."""

    def make() -> asyncio.Protocol:
        slot = slots.take()
        if slot is None:
            return Refusal(slots.proto, slots.limit)
        return server(handler, slot=slot, slots=slots, **options)

    return make
