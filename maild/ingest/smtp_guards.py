"""What the SMTP edge guards against, apart from routing: too many sessions,
envelope addresses that are not text, and peer text reaching the log raw.

Kept out of smtp.py so the edge reads as hooks; nothing here answers a
transaction or touches the intake.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from typing import Any

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


class Slot:
    """One session's place under `max_sessions`; released once, however often asked."""

    def __init__(self, slots: SessionSlots) -> None:
        self._slots: SessionSlots | None = slots

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.give_back()


class SessionSlots:
    """Concurrent SMTP and LMTP sessions, counted across listeners."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self) -> Slot | None:
        with self._lock:
            if self.used >= self.limit:
                return None
            self.used += 1
        return Slot(self)

    def give_back(self) -> None:
        with self._lock:
            self.used -= 1


class Refusal(asyncio.Protocol):
    """A connection past `max_sessions`: 421 in place of the greeting, then closed."""

    def __init__(self, proto: str, limit: int) -> None:
        self.proto, self.limit = proto, limit
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        logging.getLogger("maild.smtp").warning(
            "refused proto=%s peer=%s code=421 reason=too-many-sessions limit=%d",
            self.proto, peer[0] if peer else "-", self.limit,
        )
        transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
        transport.close()
