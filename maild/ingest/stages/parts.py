"""The MIME tree of one message: its body texts and its attachments.

Walks the tree without recursion (hostile nesting must not blow the stack),
and copies an attached message out without recursion when the stdlib's
generator runs out of stack (flat_bytes: a few hundred messages attached in one
another do that). Before the stdlib builds the tree, cap_parts cuts a message
with more than MAX_BOUNDARY_LINES lines that begin with "--" (each MIME part
starts at one) just before the next such line: the stdlib would otherwise
build every part, a million tiny ones costing seconds and hundreds of MB,
before the walk's own cap applies. The headers and the parts before the cut
are read; the rest stays in the raw message, with a defect. It never calls a
container an attachment, names every file as its sender meant
(Content-Disposition filename with RFC 2231, then Content-Type name, then
Content-Location, then a generated name with the type's extension), keeps a
forwarded message whole under its subject, and opens winmail.dat. It never
touches the database.
"""

from __future__ import annotations

import email
import email.message
import email.parser
import mimetypes
import re
import urllib.parse

from maild.ingest.stages.charsets import decode_bytes, storable
from maild.ingest.stages.headers import decode
from maild.ingest.stages.records import Attachment
from maild.ingest.stages.tnef import TnefError, read_tnef

Message = email.message.Message

SAFE_NAME_RE = re.compile(r"[^\w.\- ()\[\]+,@'&#!~]+", re.UNICODE)
_MIME_DB = mimetypes.MimeTypes()  # Python's own table only: the same names on every machine
_TEXT_REPORTS = ("text/rfc822-headers", "text/rfc822-header", "message/delivery-status", "message/rfc822-headers")
_BOUNDARY_LINE = re.compile(r"^--([^\s]{1,200}?)(?:--)?[ \t\r]*$", re.M)
_MAX_PARTS = 1000  # MIME parts walked; the rest stays in the raw message, with a defect
MAX_BOUNDARY_LINES = 10_000  # lines starting "--" read; the message is cut before the next one
_DASH_LINE = re.compile(rb"[\r\n]--")
_RECOVER_DEPTH = 8  # multiparts with a lost boundary re-read within one another


def cap_parts(raw: bytes) -> tuple[bytes, str | None]:
    """raw, or raw cut before its (MAX_BOUNDARY_LINES + 1)-th line starting with "--"
    (with CRLF, LF or bare CR line ends alike), and the defect that says so."""
    if raw.count(b"\n--") + raw.count(b"\r--") <= MAX_BOUNDARY_LINES:
        return raw, None
    for n, found in enumerate(_DASH_LINE.finditer(raw)):
        if n == MAX_BOUNDARY_LINES:
            cut = found.start() + 1
            return raw[:cut], (
                f"more than {MAX_BOUNDARY_LINES} MIME boundary lines; read the first {cut} bytes, "
                "the rest left in the raw message"
            )
    return raw, None


def raw_payload(part: Message) -> object:
    """The payload as the parser left it (8-bit bytes as surrogate escapes): get_payload()
    would decode 8-bit text with the declared charset, which fails on a hostile one."""
    return getattr(part, "_payload", None)


def flat_bytes(message: Message) -> bytes:
    """A message as bytes, written without recursion: the stdlib's generator recurses
    once per attached message and runs out of stack a few hundred levels down."""
    out: list[bytes] = []
    todo: list[Message | bytes] = [message]
    while todo:
        item = todo.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        out.extend(item.policy.fold_binary(name, value) for name, value in item.raw_items())
        out.append(b"\n")
        payload = raw_payload(item)
        if not isinstance(payload, list):
            out.append(str(payload or "").encode("utf-8", "surrogateescape"))
            continue
        children = [c for c in payload if isinstance(c, Message)]
        if item.get_content_maintype() != "multipart":  # message/rfc822: the message itself
            todo.extend(reversed(children))
            continue
        line = f"--{item.get_boundary() or 'boundary'}".encode("utf-8", "surrogateescape")
        pieces: list[Message | bytes] = [str(item.preamble or "").encode("utf-8", "surrogateescape")]
        for child in children:
            pieces += [line + b"\n", child, b"\n"]
        pieces.append(line + b"--\n" + str(item.epilogue or "").encode("utf-8", "surrogateescape"))
        todo.extend(reversed(pieces))
    return b"".join(out)


def safe_filename(name: str, fallback: str) -> str:
    name = decode(name).replace("\\", "/").rsplit("/", 1)[-1]
    name = SAFE_NAME_RE.sub("_", name).strip(" ._")[:200]
    return name or fallback


def extension_for(ctype: str) -> str:
    if ctype in _TEXT_REPORTS:
        return ".txt"
    if ctype == "message/rfc822":
        return ".eml"
    return _MIME_DB.guess_extension(ctype, strict=False) or ".bin"


def _param(part: Message, name: str, header: str) -> str | None:
    """A parameter, with RFC 2231 continuations and charsets, or RFC 2047 words, decoded."""
    try:
        value = part.get_param(name, header=header)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, tuple):  # RFC 2231: (charset, language, percent-decoded as latin-1)
        charset, _, text = value
        return decode_bytes(_percent_bytes(text), charset or None, [], "filename")
    return decode(str(value))


def _percent_bytes(text: str) -> bytes:
    """The bytes of an RFC 2231 value the stdlib percent-decoded as Latin-1; a character
    sent raw beside the %XX escapes (not Latin-1, not a raw byte) as UTF-8."""
    try:
        return text.encode("latin-1", "surrogateescape")
    except UnicodeEncodeError:
        return b"".join(
            ch.encode("latin-1", "surrogateescape") if ord(ch) < 256 or "\udc80" <= ch <= "\udcff"
            else ch.encode("utf-8", "replace")
            for ch in text
        )


def payload_bytes(part: Message) -> bytes:
    """A leaf part's decoded payload, as bytes whatever the stdlib returns."""
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    return str(data or "").encode("utf-8", "surrogateescape")


def _sent_bytes(part: Message) -> bytes:
    """A leaf's payload as it was sent, transfer encoding and all."""
    return str(raw_payload(part) or "").encode("utf-8", "surrogateescape")


def _ctype(part: Message) -> str:
    return storable(part.get_content_type())


def _charset(part: Message) -> str | None:
    try:
        return part.get_content_charset()
    except Exception:  # a malformed parameter: read as unlabelled
        return None


def filename(part: Message) -> str | None:
    for name, header in (("filename", "content-disposition"), ("name", "content-type")):
        value = _param(part, name, header)
        if value and value.strip():
            return value
    location = part.get("Content-Location")
    if location:
        try:
            path = urllib.parse.urlsplit(decode(location)).path
        except ValueError:  # "Invalid IPv6 URL" and the like: no name from it
            return None
        last = urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1])
        if last.strip():
            return last
    return None


class Body:
    """Collects the text parts and the attachments of one message tree."""

    def __init__(self) -> None:
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[Attachment] = []
        self.defects: list[str] = []
        # winmail.dat's own text: the body only when the mail has no other
        self.tnef_plain: list[str] = []
        self.tnef_html: list[str] = []

    def walk(self, message: Message) -> None:
        todo: list[tuple[Message, int]] = [(message, 0)]
        seen = 0
        while todo:
            part, depth = todo.pop()
            seen += 1
            if seen > _MAX_PARTS:
                self.defects.append(f"more than {_MAX_PARTS} MIME parts; the rest left in the raw message")
                return
            if part is not message:
                self.defects.extend(type(d).__name__ for d in part.defects)
            ctype = _ctype(part)
            payload = raw_payload(part)
            if ctype in _TEXT_REPORTS:
                self._report(part, ctype)
            elif part.get_content_maintype() == "message" and ctype != "message/external-body":
                self._attach_message(part)
            elif isinstance(payload, list):
                children = [c for c in payload if isinstance(c, Message)]
                todo.extend((c, depth) for c in reversed(children))
            elif part.get_content_maintype() == "multipart":
                todo.extend((c, depth + 1) for c in reversed(self._recover(part, depth)))
            else:
                self._leaf(part, ctype)

    def _recover(self, part: Message, depth: int) -> list[Message]:
        """A multipart whose boundary is lost: re-read it with the first boundary line
        in its body, else keep its body as text. Never an attachment."""
        text = raw_payload(part)
        text = text if isinstance(text, str) else ""
        found = _BOUNDARY_LINE.search(text)
        if found and depth < _RECOVER_DEPTH:
            self.defects.append(f"{_ctype(part)}: boundary not found; read with {found.group(1)[:40]!r}")
            wrapper = f'Content-Type: {_ctype(part)}; boundary="{found.group(1)}"\n\n'
            try:
                children = email.message_from_string(wrapper + text).get_payload()
            except RecursionError:
                children = None
                self.defects.append(f"{_ctype(part)}: parts nested too deeply to read")
            if isinstance(children, list) and children:
                return [c for c in children if isinstance(c, Message)]
        self.defects.append(f"{_ctype(part)}: no parts found; body kept as text")
        data = payload_bytes(part)
        if data.strip():
            self.plain.append(decode_bytes(data, _charset(part), self.defects))
        return []

    def _report(self, part: Message, ctype: str) -> None:
        """Returned headers and delivery status: readable text files."""
        payload = raw_payload(part)
        try:
            if isinstance(payload, list):  # compat32 reads a delivery-status as header blocks
                data = b"\n".join(p.as_bytes() for p in payload if isinstance(p, Message))
            else:
                data = payload_bytes(part)
        except Exception:
            data = flat_bytes(part).partition(b"\n\n")[2] if isinstance(payload, list) else _sent_bytes(part)
        n = len(self.attachments) + 1
        name = filename(part)
        self.attachments.append(Attachment(safe_filename(name or "", f"attachment-{n}.txt"), ctype, data))

    def _attach_message(self, part: Message) -> None:
        payload = raw_payload(part)
        inner = payload[0] if isinstance(payload, list) and payload and isinstance(payload[0], Message) else None
        try:
            data = inner.as_bytes() if inner is not None else payload_bytes(part)
        except RecursionError:  # messages attached in one another, hundreds deep
            data = flat_bytes(inner) if inner is not None else _sent_bytes(part)
        except Exception:
            data = flat_bytes(inner) if inner is not None else _sent_bytes(part)
            self.defects.append(f"{_ctype(part)}: not readable as sent; kept as sent")
        if inner is None and data:  # its headers, for the subject
            inner = email.parser.BytesParser().parsebytes(data[:64 * 1024], headersonly=True)
        subject = decode(inner.get("Subject", ""), self.defects, "attached Subject") if inner is not None else ""
        name = filename(part) or (subject[:180] + ".eml" if subject.strip() else "")
        n = len(self.attachments) + 1
        self.attachments.append(Attachment(safe_filename(name, f"message-{n}.eml"), _ctype(part), data))

    def _leaf(self, part: Message, ctype: str) -> None:
        disposition = part.get_content_disposition()
        name = filename(part)
        try:
            data = payload_bytes(part)
        except Exception:
            data = _sent_bytes(part)
            self.defects.append(f"{ctype}: payload not decodable; kept as sent")
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and not name:
            text = decode_bytes(data, _charset(part), self.defects)
            (self.plain if ctype == "text/plain" else self.html).append(text)
            return
        if (ctype == "application/ms-tnef" or (name or "").lower() == "winmail.dat") and self._tnef(data):
            return
        cid = part.get("Content-ID")
        cid = storable(cid).strip().strip("<>")[:500] if isinstance(cid, str) else None
        n = len(self.attachments) + 1
        self.attachments.append(
            Attachment(
                filename=safe_filename(name or "", f"attachment-{n}{extension_for(ctype)}"),
                content_type=ctype,
                data=data,
                content_id=cid or None,
                inline=disposition == "inline" or (bool(cid) and disposition != "attachment"),
            )
        )

    def _tnef(self, data: bytes) -> bool:
        """The files and text inside a winmail.dat; False (with a defect) to keep it as it came."""
        try:
            content = read_tnef(data)
        except TnefError as exc:
            self.defects.append(f"winmail.dat not decoded ({exc}); kept as it came")
            return False
        for name, payload in content.files:
            n = len(self.attachments) + 1
            ctype = _MIME_DB.guess_type(name, strict=False)[0] or "application/octet-stream"
            self.attachments.append(Attachment(safe_filename(name, f"attachment-{n}.bin"), ctype, payload))
        if content.text and content.text.strip():
            self.tnef_plain.append(content.text)
        elif content.html:
            self.tnef_html.append(content.html)
        return True
