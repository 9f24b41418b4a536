"""What the SMTP edge guards against, apart from routing: too many sessions (per
listener and per client address), envelope addresses that are not text, and
peer text reaching the log raw.

Kept out of smtp.py so the edge reads as hooks; nothing here answers a
transaction or touches the intake.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import threading

# C0 and C1 controls and DEL, and the lone surrogates through which aiosmtpd
# carries bytes that are not UTF-8 (surrogateescape).
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
UNSHOWABLE_RE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, shown as the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: str) -> str:
    """Peer-supplied text made safe for one log line: controls and undecodable bytes escaped."""
    return UNSHOWABLE_RE.sub(_escape, text)


class PeerTextFilter(logging.Filter):
    """Escapes control characters in the text arguments of a log record.

    Put on the loggers of the SMTP edge (ours and aiosmtpd's), whose records
    carry addresses, host names and logins as the peer sent them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = shown(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(shown(a) if isinstance(a, str) else a for a in record.args)
        return True


def escape_peer_text(*loggers: logging.Logger) -> None:
    for logger in loggers:
        if not any(isinstance(f, PeerTextFilter) for f in logger.filters):
            logger.addFilter(PeerTextFilter())


def address_fault(address: str, smtputf8: bool) -> str | None:
    """Why an envelope address cannot be taken as text, or None when it can.

    UTF-8 is text only in a transaction that declared SMTPUTF8 (RFC 6531);
    bytes that are not UTF-8 and control characters never are.
    """
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in address):
        return "undecodable"
    if CONTROL_RE.search(address):
        return "control-character"
    if not smtputf8 and not address.isascii():
        return "8-bit"
    return None


def peer_key(host: str) -> str:
    """The client address a per-client cap counts: IPv4 as it is, IPv6 by its /64
    (one site's share, which a client could otherwise walk through address by address)."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Slot:
    """One session's place in its listener's pool (and under its client's cap);
    released once, however often asked."""

    def __init__(self, slots: SessionSlots) -> None:
        self._slots: SessionSlots | None = slots
        self.peer: str | None = None  # the client address counted, once admitted

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.give_back(self.peer)


class SessionSlots:
    """Concurrent sessions of one listener, and optionally of one client address.

    Each listener has its own pool, so SMTP clients can never take the places
    an MTA's LMTP hand-off needs. The pool is checked when asyncio asks for a
    protocol (no peer known yet), the client's cap once the connection is made.
    """

    def __init__(self, proto: str, limit: int, per_peer: int | None = None) -> None:
        self.proto, self.limit, self.per_peer, self.used = proto, limit, per_peer, 0
        self.peers: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self) -> Slot | None:
        with self._lock:
            if self.used >= self.limit:
                return None
            self.used += 1
        return Slot(self)

    def admit(self, slot: Slot, host: str) -> bool:
        """Counts the slot against its client's address; False when that address is at its cap."""
        if self.per_peer is None:
            return True
        key = peer_key(host)
        with self._lock:
            held = self.peers.get(key, 0)
            if held >= self.per_peer:
                return False
            self.peers[key] = held + 1
        slot.peer = key
        return True

    def give_back(self, peer: str | None) -> None:
        with self._lock:
            self.used -= 1
            if peer is not None:
                if (held := self.peers[peer] - 1) > 0:
                    self.peers[peer] = held
                else:
                    del self.peers[peer]


TOO_MANY = b"421 4.7.0 Too many connections, try again later\r\n"
TOO_MANY_FROM_PEER = b"421 4.7.0 Too many connections from your address, try again later\r\n"


def refuse(transport: asyncio.BaseTransport, proto: str, reason: str, limit: int, reply: bytes) -> None:
    """421 in place of the greeting, logged with its reason, then closed."""
    peer = transport.get_extra_info("peername")
    logging.getLogger("maild.smtp").warning(
        "refused proto=%s peer=%s code=421 reason=%s limit=%d", proto, peer[0] if peer else "-", reason, limit,
    )
    if isinstance(transport, asyncio.WriteTransport):
        transport.write(reply)
    transport.close()


class Refusal(asyncio.Protocol):
    """A connection past its listener's pool: 421 in place of the greeting, then closed."""

    def __init__(self, proto: str, limit: int) -> None:
        self.proto, self.limit = proto, limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        refuse(transport, self.proto, "too-many-sessions", self.limit, TOO_MANY)
