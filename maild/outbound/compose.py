"""Building the bytes of an outgoing mail: pure, and safe against header injection.

Every header value is flattened to one line before it reaches the email
package, so text a customer wrote (a subject, a name) can never add a header.
Attachments are added as MIME parts (inline ones keep their Content-ID);
their names are flattened the same way.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

_TOKEN = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")


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


def one_line(value: str, limit: int = 900) -> str:
    """A header value with every line break and control character folded to a space."""
    cleaned = "".join(" " if ord(ch) < 32 or ch in "\u2028\u2029\x7f" else ch for ch in value)
    return " ".join(cleaned.split())[:limit]


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
