"""Building the bytes of an outgoing mail: pure, and safe against header injection.

Every header value is flattened to one line before it reaches the email
package, so text a customer wrote (a subject, a name) can never add a header.
Attachments are added as MIME parts (inline ones keep their Content-ID);
their names are flattened the same way.

The common case, a plain-text mail whose headers are ASCII, is written here by
hand: the email package's header registry and policy folding cost over a
millisecond a mail, most of what notifying reps and acknowledging customers
costs under a burst. It writes what the email package would (same headers,
same structure, 7bit, 8bit or quoted-printable text), and anything else (an
attachment, a non-ASCII header, an address that needs quoting, text that looks
like an encoded word) goes through the email package.
"""

from __future__ import annotations

import binascii
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

_TOKEN = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")
_QUOTABLE = re.compile(r"[ -~]*")  # printable ASCII; a quote or a backslash are ruled out apart
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII but the colon
_BREAKS = re.compile("[\x00-\x1f\x7f\u2028\u2029]")  # line breaks and control characters
_OWN_FIELDS = {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to", "references",
               "auto-submitted", "x-auto-response-suppress", "x-maild-loop", "content-type",
               "content-transfer-encoding", "mime-version"}
FOLD = 78  # the email package's SMTP policy folds and wraps at 78


@dataclass(frozen=True)
class OutAttachment:
    """A file carried by an outgoing mail; `sha256` names the stored blob it came from."""

    filename: str
    content_type: str
    data: bytes
    sha256: str
    inline: bool = False
    content_id: str | None = None


@dataclass(frozen=True)
class Outgoing:
    """One mail maild decided to send, before it has a Message-ID."""

    kind: str  # acknowledgement, notification, auto, reply, failure
    mailbox: str
    to: tuple[str, ...]
    subject: str
    body: str
    issue_id: int | None = None
    cc: tuple[str, ...] = ()
    rep_id: int | None = None
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    auto: bool = True
    to_customer: bool = False
    # More headers as (name, value), e.g. a campaign's List-Unsubscribe and Precedence: bulk.
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[OutAttachment, ...] = ()
    customer_id: int | None = None  # the issue's customer, when the caller knows it (else it is read)


def one_line(value: str, limit: int = 900) -> str:
    """A header value with every line break and control character folded to a space."""
    return " ".join(_BREAKS.sub(" ", value).split())[:limit]


def new_message_id(domain: str) -> str:
    """Our Message-IDs: `maild.<uuid>@<message_id_domain>` (without angle brackets)."""
    return f"maild.{uuid.uuid4().hex}@{domain}"


def thread_root(issue_id: int, domain: str) -> str:
    """The Message-ID every notice to reps about one issue refers to, so mail clients group them.

    No mail carries it as its own Message-ID: it only names the thread.
    """
    return f"issue-{issue_id}.root@{domain}"


def _address(addr: str, display_name: str = "") -> Address:
    local, _, domain = one_line(addr, 320).rpartition("@")
    return Address(display_name=one_line(display_name, 200), username=local, domain=domain)


def compose(
    out: Outgoing, from_addr: str, display_name: str, message_id: str, date: datetime, loop_tag: str
) -> bytes:
    plain = _compose_plain(out, from_addr, display_name, message_id, date, loop_tag)
    if plain is not None:
        return plain
    return _compose_email(out, from_addr, display_name, message_id, date, loop_tag)


def _compose_email(
    out: Outgoing, from_addr: str, display_name: str, message_id: str, date: datetime, loop_tag: str
) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(from_addr, display_name)
    msg["To"] = [_address(a) for a in out.to]
    if out.cc:
        msg["Cc"] = [_address(a) for a in out.cc]
    if out.reply_to:
        msg["Reply-To"] = _address(out.reply_to, display_name)
    msg["Subject"] = one_line(out.subject)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = f"<{one_line(message_id, 250)}>"
    if out.in_reply_to:
        msg["In-Reply-To"] = f"<{one_line(out.in_reply_to, 250)}>"
    refs = [one_line(r, 250) for r in out.references][-20:]
    if refs:
        msg["References"] = " ".join(f"<{r}>" for r in refs)
    if out.auto:
        # RFC 3834; and ask Exchange not to answer it with an out-of-office.
        msg["Auto-Submitted"] = "auto-replied" if out.in_reply_to else "auto-generated"
        msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Maild-Loop"] = one_line(loop_tag, 100)
    for name, value in out.headers:
        msg[one_line(name, 76)] = one_line(value)
    msg.set_content(out.body)
    for a in out.attachments:
        _attach(msg, a)
    return msg.as_bytes()


def _attach(msg: EmailMessage, a: OutAttachment) -> None:
    maintype, _, subtype = a.content_type.lower().split(";")[0].strip().partition("/")
    if not (_TOKEN.fullmatch(maintype) and _TOKEN.fullmatch(subtype)) or maintype in ("multipart", "message"):
        maintype, subtype = "application", "octet-stream"  # raw bytes, never a container we would have to parse
    cid = f"<{one_line(a.content_id, 250).strip('<>')}>" if a.content_id else None
    msg.add_attachment(a.data, maintype=maintype, subtype=subtype,
                       filename=one_line(a.filename, 255) or "attachment",
                       disposition="inline" if a.inline else "attachment", cid=cid)


def _plain_address(addr: str, display_name: str = "") -> str | None:
    """`Name <local@domain>` as the email package writes it, or None when it needs more than ASCII and quotes."""
    local, at, domain = one_line(addr, 320).rpartition("@")
    if not at or not _ATOMS.fullmatch(local) or not _DOMAIN.fullmatch(domain):
        return None
    name = one_line(display_name, 200)
    if not name:
        return f"{local}@{domain}"
    if _PHRASE.fullmatch(name):
        return f"{name} <{local}@{domain}>"
    if _QUOTABLE.fullmatch(name) and '"' not in name and "\\" not in name:
        return f'"{name}" <{local}@{domain}>'
    return None


def _fold(name: str, value: str) -> str | None:
    """`Name: value` folded at spaces into lines of at most 78; None when it is not plain ASCII."""
    if not value.isascii() or "=?" in value:
        return None  # the email package would encode it, or decode what looks like an encoded word
    line = f"{name}: {value}"
    if max(len(word) for word in value.split(" ")) > 900:
        return None  # no space to fold at within a line's 998
    if len(line) <= FOLD:
        return line + "\r\n"
    lines, current = [], f"{name}:"
    for word in value.split(" "):
        if len(current) + 1 + len(word) > FOLD and current != f"{name}:":
            lines.append(current)
            current = ""
        current += " " + word
    lines.append(current)
    return "\r\n".join(lines) + "\r\n"


def _plain_body(body: str) -> tuple[str, bytes] | None:
    """The transfer encoding and the encoded text, as the email package's set_content picks them."""
    try:
        lines = body.encode("utf-8").splitlines()
    except UnicodeEncodeError:
        return None
    text = b"\n".join(lines) + b"\n"
    if max((len(line) for line in lines), default=0) <= FOLD:
        cte = "7bit" if text.isascii() else "8bit"
    else:
        cte, text = "quoted-printable", binascii.b2a_qp(text, istext=True)
    return cte, text.replace(b"\n", b"\r\n")


def _plain_list(addresses: tuple[str, ...]) -> str | None:
    written = [_plain_address(a) for a in addresses]
    return None if None in written else ", ".join(written)  # type: ignore[arg-type]


def _compose_plain(
    out: Outgoing, from_addr: str, display_name: str, message_id: str, date: datetime, loop_tag: str
) -> bytes | None:
    """The mail as _compose_email writes it, for the plain-text ASCII-header case; None for any other."""
    body = None if out.attachments else _plain_body(out.body)
    sender = _plain_address(from_addr, display_name)
    to, cc = _plain_list(out.to), _plain_list(out.cc)
    reply_to = _plain_address(out.reply_to, display_name) if out.reply_to else ""
    if body is None or sender is None or to is None or cc is None or reply_to is None:
        return None
    fields = [("From", sender), ("To", to), ("Cc", cc), ("Reply-To", reply_to),
              ("Subject", one_line(out.subject)), ("Date", format_datetime(date)),
              ("Message-ID", f"<{one_line(message_id, 250)}>")]
    if out.in_reply_to:
        fields.append(("In-Reply-To", f"<{one_line(out.in_reply_to, 250)}>"))
    refs = [one_line(r, 250) for r in out.references][-20:]
    if refs:
        fields.append(("References", " ".join(f"<{r}>" for r in refs)))
    if out.auto:
        fields += [("Auto-Submitted", "auto-replied" if out.in_reply_to else "auto-generated"),
                   ("X-Auto-Response-Suppress", "All")]
    fields.append(("X-Maild-Loop", one_line(loop_tag, 100)))
    extra = [(one_line(name, 76), one_line(value)) for name, value in out.headers]
    if {name.lower() for name, _ in extra} & _OWN_FIELDS or not all(_FIELD_NAME.fullmatch(n) for n, _ in extra):
        return None  # a header of our own set twice, or an odd name: the email package says what it makes of it
    cte, text = body
    fields += extra + [("Content-Type", 'text/plain; charset="utf-8"'), ("Content-Transfer-Encoding", cte),
                       ("MIME-Version", "1.0")]
    head = []
    for name, value in fields:
        if name in ("Cc", "Reply-To") and not value:
            continue
        line = _fold(name, value) if value else None
        if line is None:
            return None
        head.append(line)
    return "".join(head).encode("ascii") + b"\r\n" + text
