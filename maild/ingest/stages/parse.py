"""The parse stage: raw bytes in, a ParsedMessage out.

The stdlib builds the MIME tree; mail-parser's forgiving parsers read the
address and date headers; headers.py decodes header text (linear, capped),
senders.py recovers a sender the From does not give, parts.py walks the body
and names the files, html.py reads HTML-only mail. This module puts them
together and never lets a forwarded message's inner headers leak into the
outer message's threading or identity. It never touches the database.
"""

from __future__ import annotations

import email.message
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime

from mailparser.dates import parse_mail_date

from maild.ingest.stages import headers
from maild.ingest.stages.html import html_texts
from maild.ingest.stages.mime import Message
from maild.ingest.stages.parts import Body, cap_parts, safe_filename
from maild.ingest.stages.quotes import new_text as strip_quotes
from maild.ingest.stages.records import ParsedMessage
from maild.ingest.stages.senders import ADDR_RE, address_header, recover_sender

logging.getLogger("mailparser").setLevel(logging.ERROR)

__all__ = ["ADDR_RE", "NestingTooDeep", "as_json", "decode_header", "message_ids", "parse", "safe_filename"]

# What lxml refuses in a string (C0 controls but tab and line ends, U+FFFE, U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
MSGID_RE = re.compile(r"<([^<>\s]{1,250})>")
MAX_TEXT = 2 * 1024 * 1024  # characters of body text kept; the raw message keeps the rest
_MAX_ID_HEADER = 64 * 1024  # characters of a Message-ID list read


def decode_header(value) -> str:
    """RFC 2047 words decoded (also across folded lines), linear and capped (headers.py)."""
    return headers.decode(value)


def message_ids(value) -> tuple[str, ...]:
    text = headers.raw_text(value)[:_MAX_ID_HEADER]
    ids = MSGID_RE.findall(text)
    if not ids and text.strip() and " " not in text.strip():
        ids = [text.strip()]  # a bare id without angle brackets
    return tuple(dict.fromkeys(ids))


class NestingTooDeep(ValueError):
    """A MIME structure nested past what the parser can walk (a known DoS shape)."""


def _date(msg: email.message.Message, defects: list[str]) -> datetime | None:
    value = msg.get("Date")
    if value is None:
        return None
    text = headers.raw_text(value)[:1000]
    result = parse_mail_date(text)
    if result.value is None:
        defects.append(f"Date: unreadable {text[:80]!r}")
    return result.value


def _body_texts(body: Body, defects: list[str], own: tuple[str, ...]) -> tuple[str, str, str | None]:
    """(text, new text, html): plain parts when there are any, else the HTML converted."""
    plain = body.plain or body.tnef_plain
    html_parts = body.html or ([] if plain else body.tnef_html)
    html = "\n".join(html_parts) if html_parts else None
    if plain:
        text = "\n".join(plain).replace("\r\n", "\n")[:MAX_TEXT]
        return text, strip_quotes(text, own) if text.strip() else "", html
    if html is None:
        return "", "", None
    text, unquoted = html_texts(_NOT_XML.sub("", html), defects)
    text = text.replace("\r\n", "\n")[:MAX_TEXT]
    if not text.strip():
        return text, "", html
    fresh = strip_quotes(unquoted, own) if unquoted and unquoted.strip() else ""
    return text, fresh or strip_quotes(text, own), html


def parse(
    raw: bytes,
    envelope_to: tuple[str, ...] = (),
    envelope_from: str | None = None,
    own_names: Iterable[str] = (),
) -> ParsedMessage:
    """Read one message. envelope_from is the SMTP MAIL FROM where the transport kept it:
    the last place a sender is looked for when the headers name none. own_names (our
    mailbox addresses and display names) mark reply attributions that quote us."""
    read, cut = cap_parts(raw)
    try:
        msg = email.message_from_bytes(read, _class=Message)
    except RecursionError:
        raise NestingTooDeep("MIME parts nested too deeply to parse") from None
    defects = [type(d).__name__ for d in msg.defects] + ([cut] if cut else [])
    from_ = address_header(msg, "From", defects)
    sender = recover_sender(msg, from_, envelope_from, defects)
    to, cc = address_header(msg, "To", defects), address_header(msg, "Cc", defects)
    reply_to = address_header(msg, "Reply-To", defects)
    date = _date(msg, defects)
    subject = headers.decode(msg.get("Subject", ""), defects, "Subject")[:1000]
    body = Body()
    try:
        body.walk(msg)
    except RecursionError:  # the walk itself is flat; this guards what it calls
        raise NestingTooDeep("MIME parts nested too deeply to walk") from None
    defects += body.defects
    text, fresh, html = _body_texts(body, defects, tuple(own_names))
    return ParsedMessage(
        message_id=next(iter(message_ids(msg.get("Message-ID", ""))), None),
        in_reply_to=message_ids(msg.get("In-Reply-To", "")),
        references=message_ids(msg.get("References", "")),
        from_=sender,
        to=to,
        cc=cc,
        reply_to=reply_to,
        subject=subject,
        date=date.astimezone(UTC) if date is not None and date.tzinfo is not None else None,
        text=text,
        new_text=fresh,
        html=html,
        attachments=tuple(body.attachments),
        defects=tuple(dict.fromkeys(defects))[:50],
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
