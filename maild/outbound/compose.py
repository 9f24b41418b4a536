"""Building the bytes of an outgoing mail: pure, and safe against header injection.

Every header value is flattened to one line before it reaches the email
package, so text a customer wrote (a subject, a name) can never add a header.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime


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


def one_line(value: str, limit: int = 900) -> str:
    """A header value with every line break and control character folded to a space."""
    cleaned = "".join(" " if ord(ch) < 32 or ch in "\u2028\u2029\x7f" else ch for ch in value)
    return " ".join(cleaned.split())[:limit]


def new_message_id(domain: str) -> str:
    """Our Message-IDs: `maild.<uuid>@<message_id_domain>` (without angle brackets)."""
    return f"maild.{uuid.uuid4().hex}@{domain}"


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
    return msg.as_bytes()
