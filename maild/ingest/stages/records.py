"""Typed records passed between the ingest stages.

Stages hand each other these frozen values, never loose dicts, so a stage's
inputs and outputs are visible in its signature.
"""

from __future__ import annotations

import email.message
import hashlib
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Address:
    name: str
    email: str

    def as_json(self) -> dict:
        return {"name": self.name, "email": self.email}


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes = field(repr=False)
    content_id: str | None = None
    inline: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def as_json(self) -> dict:
        return {
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Bounce:
    """A non-delivery report (or complaint) and what it says it reports on."""

    kind: str  # "dsn", "non-delivery", "feedback-report"
    original_message_id: str | None
    recipients: tuple[str, ...] = ()
    status: str | None = None  # e.g. "5.1.1"

    def as_json(self) -> dict:
        return {
            "kind": self.kind,
            "original_message_id": self.original_message_id,
            "recipients": list(self.recipients),
            "status": self.status,
        }


@dataclass(frozen=True)
class Classification:
    """What kind of mail this is; recorded on the message, acted on later."""

    auto: str | None = None  # why it counts as automatic, or None for human mail
    bounce: Bounce | None = None
    mailing_list: str | None = None  # List-Id or similar, when it came via a list
    own_mail: bool = False  # our own outbound mail coming back
    probe: str | None = None  # the X-Maild-Probe header as found (the pipeline verifies its signature)


HUMAN = Classification()


@dataclass(frozen=True)
class ParsedMessage:
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    from_: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    subject: str
    date: datetime | None
    text: str
    new_text: str
    html: str | None
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...]
    # Recipients as the transport saw them (SMTP RCPT TO, Delivered-To), which
    # may differ from To/Cc; token addresses are looked for in both.
    envelope_to: tuple[str, ...] = ()
    message: email.message.Message | None = field(default=None, compare=False, repr=False)

    @property
    def recipients(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for a in (*self.envelope_to, *(x.email for x in self.to), *(x.email for x in self.cc)):
            if a:
                seen.setdefault(a, None)
        return tuple(seen)


@dataclass(frozen=True)
class CustomerMatch:
    """Outcome of identify: an existing record, or what to create."""

    customer_id: int | None
    email: str
    name: str
    is_rep: bool = False
    rep_id: int | None = None
    own_address: bool = False  # mail from one of our own mailbox addresses


@dataclass(frozen=True)
class ThreadDecision:
    """Outcome of thread: which issue the interaction belongs to, and why."""

    issue_id: int | None  # None: open a new issue
    reason: str  # "token", "in-reply-to", "references", "subject-tag", "new"
    category: str = "uncategorized"
    token_rep_id: int | None = None
    token_purpose: str | None = None
    issue_status: str | None = None  # of the issue it threads onto


@dataclass(frozen=True)
class Stored:
    raw_id: int
    outcome: str  # interaction, own-mail, unmatched-bounce, unmatched-auto
    mailbox: str
    issue_id: int | None = None
    interaction_id: int | None = None
    new_issue: bool = False
    reopened: bool = False
    customer_id: int | None = None
    rep_id: int | None = None
    auto: str | None = None
    thread_reason: str | None = None
    source: str = ""  # the transport it came by: smtp, lmtp, imap, pipe, import
    token_rep_id: int | None = None  # the rep a valid reply token in its recipients names
    token_purpose: str | None = None  # reply, note or customer
    probe: str | None = None  # outcome "probe": the self-test probe's token
    # The interaction's columns as stored, and whether it has files: what the emit
    # hooks would otherwise read back from the database, one query per mail.
    record: dict | None = field(default=None, repr=False, compare=False)
    has_files: bool = False
