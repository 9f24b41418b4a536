"""Address headers, and who sent a message when its From does not say.

Real mail has a From with a name and `<>`, a From of garbage followed by a
good one, a From with no address at all. A helpdesk that quarantines those
loses customers, so the sender is recovered from the first From with a valid
address, then Sender, Reply-To, Return-Path and the envelope sender, and the
defects say where it came from. mail-parser's forgiving parser reads the
addresses; display names are decoded here (headers.py) so that no header
goes through the stdlib's quadratic decoder.
"""

from __future__ import annotations

import email.message
import email.utils
import functools
import re

from mailparser.utils import get_addresses

from maild.ingest.stages.headers import decode, raw_text
from maild.ingest.stages.parts import raw_payload
from maild.ingest.stages.records import Address

Message = email.message.Message

ADDR_RE = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")
_VALID = re.compile(r"(?:\"[^\"\r\n]{1,64}\"|[^\s@<>()\[\],;:\"]{1,64})@[^\s@<>()\[\],;:\"]{1,255}")
_MAX_ADDRESS_HEADER = 64 * 1024  # characters of an address header read
_MAX_CACHED = 1024  # characters of an address header whose reading is remembered
_HEADER_LINE = re.compile(r"^[!-9;-~]{1,76}:", re.M)
_FALLBACKS = ("Sender", "Reply-To", "Return-Path")


def valid_address(addr: str) -> bool:
    return len(addr) <= 320 and _VALID.fullmatch(addr) is not None


def _pairs(text: str, name: str, defects: list[str]) -> list[tuple[str, str]]:
    found: list[dict] = []
    try:
        pairs = get_addresses(text, defects=found)
    except Exception as exc:
        defects.append(f"{name}: mail-parser could not read it ({type(exc).__name__}); read with the stdlib")
        pairs = email.utils.getaddresses([text])
    defects.extend(f"{name}: {d.get('reason', d)}" for d in found)
    return list(pairs or ())


def read_addresses(value: object, name: str, defects: list[str]) -> tuple[Address, ...]:
    """The valid addresses in one header value, display names decoded."""
    if value is None:
        return ()
    text = raw_text(value)
    if len(text) > _MAX_CACHED:
        return _read_text(text, name, defects)
    # The same few headers come again and again (our own address, a regular
    # customer's From): each is read once per process, with the defects it gave.
    found, said = _read_short(text, name)
    defects.extend(said)
    return found


def _read_text(text: str, name: str, defects: list[str]) -> tuple[Address, ...]:
    if len(text) > _MAX_ADDRESS_HEADER:
        # the address usually ends the header: keep its start and its end
        defects.append(f"{name}: longer than {_MAX_ADDRESS_HEADER} characters; only its start and end read")
        half = _MAX_ADDRESS_HEADER // 2
        text = text[:half] + " " + text[-half:]
    out = []
    for display, addr in _pairs(text, name, defects):
        addr = (addr or "").strip().strip("<>").strip()
        if valid_address(addr):
            out.append(Address(name=decode(display or "", defects, f"{name} name"), email=addr))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _read_short(text: str, name: str) -> tuple[tuple[Address, ...], tuple[str, ...]]:
    said: list[str] = []
    return _read_text(text, name, said), tuple(said)


def address_header(msg: Message, name: str, defects: list[str]) -> tuple[Address, ...]:
    """Every valid address in every copy of header `name`."""
    out: list[Address] = []
    for value in msg.get_all(name) or ():
        out.extend(read_addresses(value, name, defects))
    return tuple(out)


def _scan(value: object, defects: list[str]) -> Address | None:
    """The first address-shaped text in a header mail-parser could make nothing of."""
    text = raw_text(value)[:_MAX_ADDRESS_HEADER]
    found = ADDR_RE.search(text)
    if not found or not valid_address(found.group(0)):
        return None
    display = text[: found.start()].strip().strip('"<').strip()
    return Address(name=decode(display, defects, "From name"), email=found.group(0))


def _from_name(msg: Message, defects: list[str]) -> str:
    """The display name of a From that has no address (`"Name" <>`)."""
    for value in msg.get_all("From") or ():
        text = raw_text(value)[:_MAX_ADDRESS_HEADER]
        name = text.split("<", 1)[0].strip().strip('"').strip()
        if name and "@" not in name:
            return decode(name, defects, "From name")
    return ""


def _from_after_broken_line(msg: Message, defects: list[str]) -> Address | None:
    """A From in header lines the stdlib put into the body, after a line in the header
    block that is no header (it ends the headers there)."""
    if not any(type(d).__name__ == "MissingHeaderBodySeparatorDefect" for d in msg.defects):
        return None
    payload = raw_payload(msg)
    if not isinstance(payload, str):
        return None
    block = re.split(r"\r?\n[ \t]*\r?\n", payload[:_MAX_ADDRESS_HEADER], maxsplit=1)[0]
    start = _HEADER_LINE.search(block)  # past the stray line(s)
    if start is None:
        return None
    rest = email.message_from_string(block[start.start() :])
    for value in rest.get_all("From") or ():
        for candidate in read_addresses(value, "From", []):
            defects.append("From: found below a line in the header block that is no header")
            return candidate
    return None


def recover_sender(msg: Message, from_: tuple[Address, ...], envelope_from: str | None, defects: list[str]) -> Address | None:
    """The sender: the first valid From, else Sender, Reply-To, Return-Path, the envelope
    sender. Each step past a clean From is recorded in defects."""
    values = msg.get_all("From") or []
    if from_:
        if len(values) > 1 and not read_addresses(values[0], "From", []):
            defects.append("From: the first From header has no valid address; the next one used")
        return from_[0]
    for value in values:
        found = _scan(value, defects)
        if found is not None:
            defects.append("From: address found in an unreadable From header")
            return found
    found = _from_after_broken_line(msg, defects)
    if found is not None:
        return found
    reason = "From: missing" if not values else "From: no valid address"
    name = _from_name(msg, defects)
    for header in _FALLBACKS:
        for value in msg.get_all(header) or ():
            for candidate in read_addresses(value, header, []):
                defects.append(f"{reason}; sender taken from {header}")
                return Address(name=candidate.name or name, email=candidate.email)
    envelope = (envelope_from or "").strip().strip("<>").strip()
    if valid_address(envelope):
        defects.append(f"{reason}; sender taken from the envelope (MAIL FROM)")
        return Address(name=name, email=envelope)
    defects.append(f"{reason}; no Sender, Reply-To, Return-Path or envelope sender to take it from")
    return None
