"""Customer mail a rep forwards to their desk address, read back as the customer's.

Mail clients forward in two ways: the original as a message/rfc822
attachment (Thunderbird, Outlook "as attachment", Apple Mail), which the
parse stage reads like any mail; or inline, below a marker line such as
Gmail's "---------- Forwarded message ---------", Outlook's
"-----Original Message-----" or Apple Mail's "Begin forwarded message:",
followed by a block of From/Date/Subject/To lines. No library reads the
inline form (it is free text that each client writes its own way), so this
module does, for the markers and labels those clients use. Pure: text and
parsed messages in, Forwarded records out; at most MAX_FORWARDS per mail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from maild.ingest.stages.parse import parse
from maild.ingest.stages.quotes import new_text
from maild.ingest.stages.records import Address, Attachment, ParsedMessage

MAX_FORWARDS = 20
HEADER_LINES = 30  # lines of a header block read after a marker

_MARKER = re.compile(
    r"^[ \t>]*(?:-{2,}[ \t]*(?:Forwarded message|Forwarded Message|Original Message|Weitergeleitete Nachricht"
    r"|Ursprüngliche Nachricht|Message transféré|Message d'origine)[ \t]*-*|Begin forwarded message:"
    r"|Anfang der weitergeleiteten Nachricht:|_{10,})[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_LABEL = re.compile(
    r"^[ \t>]*\*?(From|Von|De|Date|Sent|Datum|Gesendet|Envoyé|Subject|Betreff|Objet|To|An|À|Cc|Reply-To)"
    r"\*?[ \t]*:\*?[ \t]*(.*)$", re.IGNORECASE)
_EMAIL = re.compile(r"[^\s<>\[\]()\"',;:]+@[^\s<>\[\]()\"',;:]+\.[A-Za-z0-9-]{2,}")
_KEYS = {"from": "from", "von": "from", "de": "from", "date": "date", "sent": "date", "datum": "date",
         "gesendet": "date", "envoyé": "date", "subject": "subject", "betreff": "subject", "objet": "subject",
         "to": "to", "an": "to", "à": "to", "cc": "cc", "reply-to": "reply_to"}


@dataclass(frozen=True)
class Forwarded:
    """One forwarded mail, as its sender wrote it."""

    sender: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    subject: str
    date: datetime | None
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    text: str
    new_text: str
    html: str | None
    attachments: tuple[Attachment, ...]


@dataclass(frozen=True)
class Inline:
    head: str  # the rep's own text above the marker
    forwarded: Forwarded


def addresses(value: str) -> tuple[Address, ...]:
    """Addresses in a header line as clients print them: "Pat <pat@x>", "Pat [mailto:pat@x]", "pat@x"."""
    out = []
    for part in re.split(r"[,;](?![^<\[]*[>\]])", value):
        m = _EMAIL.search(part)
        if m:
            name = part[:m.start()].replace("mailto:", "").strip(" \t\"'<[(")
            out.append(Address(" ".join(name.split()), m.group(0)))
    return tuple(out)


def _date(value: str) -> datetime | None:
    for text in (value, value.replace(" at ", " "), re.sub(r"^\w+,\s*", "", value)):
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            continue
        return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return None


def _unquote(lines: list[str]) -> list[str]:
    """Apple Mail quotes a forwarded block with "> "; take the quoting off when every line has it."""
    if lines and all(line.startswith(">") or not line.strip() for line in lines):
        return [re.sub(r"^> ?", "", line) for line in lines]
    return lines


def _header_block(lines: list[str]) -> tuple[dict[str, str], int]:
    """The From/Date/Subject/To lines right after a marker, and where the body starts."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(lines) and i < HEADER_LINES and not (fields and not lines[i].strip()):
        m = _LABEL.match(lines[i])
        if m:
            fields.setdefault(_KEYS[m.group(1).lower()], m.group(2).strip())
        elif lines[i].strip() and not fields:
            break  # text right after the marker: no header block
        i += 1
    return fields, i


def split_inline(text: str, own_names: Iterable[str] = (), attachments: tuple[Attachment, ...] = ()) -> Inline | None:
    """The first inline-forwarded mail in a text (a marker line, then a From line), with the
    text above it; None without one."""
    for marker in _MARKER.finditer(text):
        lines = _unquote(text[marker.end():].lstrip("\r\n").splitlines())
        fields, start = _header_block(lines)
        if "from" not in fields:
            continue
        body = "\n".join(lines[start:]).strip("\n")
        forwarded = Forwarded(
            next(iter(addresses(fields["from"])), None), addresses(fields.get("to", "")),
            addresses(fields.get("cc", "")), fields.get("subject", ""), _date(fields.get("date", "")),
            None, (), (), body, new_text(body, own_names) if body.strip() else "", None, attachments,
        )
        return Inline(text[:marker.start()], forwarded)
    return None


def _from_parsed(p: ParsedMessage) -> Forwarded:
    return Forwarded(p.from_, p.to, p.cc, p.subject, p.date, p.message_id, p.in_reply_to, p.references,
                     p.text, p.new_text, p.html, p.attachments)


def attached(msg: ParsedMessage, own_names: Iterable[str] = ()) -> list[Forwarded]:
    """Mails forwarded as message/rfc822 attachments, read as the parse stage reads any mail.

    Their bytes are part of the rep's mail, which passed the parse budget whole.
    """
    names = tuple(own_names)
    return [_from_parsed(parse(a.data, own_names=names)) for a in msg.attachments
            if a.content_type == "message/rfc822"][:MAX_FORWARDS]
