"""The parse stage: raw bytes in, a ParsedMessage out.

The stdlib builds the MIME tree; mail-parser's forgiving parsers read the
address and date headers. This module decodes the rest, chooses the body,
keeps everything else as attachments and never lets a forwarded message's
inner headers leak into the outer message's threading or identity. It never
touches the database.
"""

from __future__ import annotations

import email.header
import email.message
import email.utils
import logging
import re
from dataclasses import dataclass
from datetime import datetime, UTC

from mailparser.dates import parse_mail_date
from mailparser.utils import get_addresses
from inscriptis import get_text

from maild.ingest.stages.quotes import new_text as strip_quotes
from maild.ingest.stages.records import Address, Attachment, ParsedMessage

logging.getLogger("mailparser").setLevel(logging.ERROR)

ADDR_RE = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
MSGID_RE = re.compile(r"<([^<>\s]{1,250})>")
FOLD_RE = re.compile(r"\r?\n[ \t]+")
SAFE_NAME_RE = re.compile(r"[^\w.\- ()\[\]+,@]+", re.UNICODE)
MAX_TEXT = 2 * 1024 * 1024  # characters of body text kept; the raw message keeps the rest


def _bytes_to_text(data: bytes, charset: str | None, defects: list[str]) -> str:
    """Decode body bytes: the declared charset, else UTF-8, else Windows-1252."""
    if charset:
        try:
            return data.decode(charset)
        except LookupError:
            defects.append(f"unknown charset {charset!r}")
        except UnicodeDecodeError:
            defects.append(f"body is not valid {charset}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _raw_header_text(value) -> str:
    """A header value as text, even when it arrived as raw 8-bit bytes."""
    if isinstance(value, email.header.Header):
        # compat32 wraps headers holding raw 8-bit bytes in a Header whose
        # chunks are bytes tagged unknown-8bit: decode them ourselves.
        value = "".join(
            _bytes_to_text(part, None if cs in (None, "unknown-8bit") else cs, []) if isinstance(part, bytes) else part
            for part, cs in email.header.decode_header(value)
        )
    value = str(value or "")
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        raw = value.encode("ascii", "surrogateescape")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw.decode("cp1252", errors="replace")
    return FOLD_RE.sub(" ", value)


def decode_header(value) -> str:
    """RFC 2047 words decoded (also across folded lines); unknown charsets tolerated."""
    text = _raw_header_text(value)
    if "=?" not in text:
        return text.strip()
    try:
        chunks = email.header.decode_header(text)
    except Exception:
        return text.strip()
    out: list[str] = []
    for part, charset in chunks:
        out.append(part if isinstance(part, str) else _bytes_to_text(part, charset, []))
    return "".join(out).strip()


def message_ids(value) -> tuple[str, ...]:
    text = _raw_header_text(value)
    ids = MSGID_RE.findall(text)
    if not ids and text.strip() and " " not in text.strip():
        ids = [text.strip()]  # a bare id without angle brackets
    return tuple(dict.fromkeys(ids))


def safe_filename(name: str, fallback: str) -> str:
    name = decode_header(name).replace("\\", "/").rsplit("/", 1)[-1]
    name = SAFE_NAME_RE.sub("_", name).strip(" ._")[:200]
    return name or fallback


def _addresses(pairs) -> tuple[Address, ...]:
    out = []
    for name, addr in pairs or ():
        addr = (addr or "").strip().strip("<>")
        if "@" in addr and len(addr) <= 320:
            out.append(Address(name=decode_header(name or ""), email=addr))
    return tuple(out)


class _Body:
    """Collects the text parts and the attachments of one message tree."""

    def __init__(self) -> None:
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[Attachment] = []
        self.defects: list[str] = []

    def walk(self, part: email.message.Message, top: bool = True) -> None:
        if not top:
            self.defects.extend(type(d).__name__ for d in part.defects)
        ctype = part.get_content_type()
        if ctype.startswith("message/") and ctype not in ("message/delivery-status",):
            self._attach_message(part)
        elif part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                for child in payload:
                    if isinstance(child, email.message.Message):
                        self.walk(child, top=False)
        else:
            self._leaf(part, ctype)

    def _attach_message(self, part: email.message.Message) -> None:
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        try:
            data = inner.as_bytes() if inner is not None else (part.get_payload(decode=True) or b"")
        except Exception:
            data = str(inner).encode("utf-8", "surrogateescape")
        subject = decode_header(inner.get("Subject", "")) if inner is not None else ""
        name = part.get_filename() or (subject + ".eml" if subject else "forwarded.eml")
        n = len(self.attachments) + 1
        self.attachments.append(
            Attachment(safe_filename(name, f"message-{n}.eml"), part.get_content_type(), data)
        )

    def _leaf(self, part: email.message.Message, ctype: str) -> None:
        disposition = part.get_content_disposition()
        filename = part.get_filename()
        data = part.get_payload(decode=True) or b""
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename:
            text = _bytes_to_text(data, part.get_content_charset(), self.defects)
            (self.plain if ctype == "text/plain" else self.html).append(text)
            return
        cid = part.get("Content-ID")
        cid = cid.strip().strip("<>") if isinstance(cid, str) else None
        ext = (part.get_content_subtype() or "bin")[:10]
        n = len(self.attachments) + 1
        self.attachments.append(
            Attachment(
                filename=safe_filename(filename or "", f"attachment-{n}.{ext}"),
                content_type=ctype,
                data=data,
                content_id=cid or None,
                inline=disposition == "inline" or (bool(cid) and disposition != "attachment"),
            )
        )


def html_to_text(html: str) -> str:
    try:
        return get_text(html).strip()
    except Exception:
        return re.sub(r"<[^>]+>", " ", html).strip()


@dataclass(frozen=True)
class _Headers:
    """What mail-parser (or, when it gives up, the stdlib) read of the headers."""

    message: email.message.Message
    from_: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    date: datetime | None
    defects: tuple[str, ...]


class NestingTooDeep(ValueError):
    """A MIME structure nested past what the parser can walk (a known DoS shape)."""


def _address_header(msg: email.message.Message, name: str, defects: list[str]) -> tuple[Address, ...]:
    value = msg.get(name)
    if value is None:
        return ()
    found: list[dict] = []
    try:
        pairs = get_addresses(value, defects=found, decode_names=True)
    except Exception as exc:
        defects.append(f"{name}: mail-parser could not read it ({type(exc).__name__}); read with the stdlib")
        pairs = email.utils.getaddresses([_raw_header_text(value)])
    defects.extend(f"{name}: {d.get('reason', d)}" for d in found)
    return _addresses(pairs)


def _date(msg: email.message.Message, defects: list[str]) -> datetime | None:
    value = msg.get("Date")
    if value is None:
        return None
    result = parse_mail_date(_raw_header_text(value))
    if result.value is None:
        defects.append(f"Date: unreadable {_raw_header_text(value)[:80]!r}")
    return result.value


def _headers(raw: bytes) -> _Headers:
    """The MIME tree from the stdlib; addresses and dates read by mail-parser's
    forgiving parsers (its full-message walk is left out: this module walks the
    body itself, and keeps forwarded messages whole)."""
    try:
        msg = email.message_from_bytes(raw)
    except RecursionError:
        raise NestingTooDeep("MIME parts nested too deeply to parse") from None
    defects = [type(d).__name__ for d in msg.defects]
    return _Headers(
        msg,
        _address_header(msg, "From", defects),
        _address_header(msg, "To", defects),
        _address_header(msg, "Cc", defects),
        _address_header(msg, "Reply-To", defects),
        _date(msg, defects),
        tuple(defects),
    )


def _sender(head: _Headers) -> Address | None:
    """The From address; a broken From still yields the first address in it, else Sender."""
    if head.from_:
        return head.from_[0]
    for name in ("From", "Sender"):
        text = _raw_header_text(head.message.get(name, ""))
        found = ADDR_RE.search(text)
        if found:
            display = text[: found.start()].strip().strip('"<').strip()
            return Address(name=decode_header(display), email=found.group(0))
    return None


def parse(raw: bytes, envelope_to: tuple[str, ...] = ()) -> ParsedMessage:
    head = _headers(raw)
    msg = head.message
    body = _Body()
    body.walk(msg)
    html = "\n".join(body.html) if body.html else None
    text = "\n".join(body.plain) if body.plain else (html_to_text(html) if html else "")
    text = text.replace("\r\n", "\n")[:MAX_TEXT]
    date = head.date
    return ParsedMessage(
        message_id=next(iter(message_ids(msg.get("Message-ID", ""))), None),
        in_reply_to=message_ids(msg.get("In-Reply-To", "")),
        references=message_ids(msg.get("References", "")),
        from_=_sender(head),
        to=head.to,
        cc=head.cc,
        reply_to=head.reply_to,
        subject=decode_header(msg.get("Subject", ""))[:1000],
        date=date.astimezone(UTC) if date is not None and date.tzinfo is not None else None,
        text=text,
        new_text=strip_quotes(text) if text.strip() else "",
        html=html,
        attachments=tuple(body.attachments),
        defects=tuple(dict.fromkeys([*head.defects, *body.defects]))[:50],
        envelope_to=tuple(envelope_to),
        message=msg,
    )


def as_json(p: ParsedMessage, auto: str | None = None, bounce: dict | None = None) -> dict:
    """The stable shape `maild parse --json` prints; fields only ever grow."""
    return {
        "message_id": p.message_id,
        "in_reply_to": p.in_reply_to[0] if p.in_reply_to else None,
        "references": list(p.references),
        "from": p.from_.as_json() if p.from_ else None,
        "to": [a.as_json() for a in p.to],
        "cc": [a.as_json() for a in p.cc],
        "reply_to": [a.as_json() for a in p.reply_to],
        "subject": p.subject,
        "date": p.date.isoformat() if p.date else None,
        "text": p.text,
        "new_text": p.new_text,
        "attachments": [a.as_json() for a in p.attachments],
        "auto": auto,
        "bounce": bounce,
        "defects": list(p.defects),
    }
