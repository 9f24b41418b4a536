"""The data model, after the ArsDigita customer-service tables.

Identification records (customers), reps, categories, issues, interactions,
the actions joining issues and interactions many-to-many, attachments stored
once by content hash, the raw message store every message enters through and
the outbox. The base is in models_base.py, the back office's tables in
models_backoffice.py; both are re-exported here. Schema changes go through
Alembic migrations in maild/migrations, never create_all.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from maild.models_base import Base, table_of, utcnow  # noqa: F401  (re-exported: one place to import from)
from maild.models_backoffice import (  # noqa: F401  (re-exported, and registered with Base with the rest)
    CannedUse,
    Campaign,
    CampaignRecipient,
    CustomerSiteFact,
    DigestRun,
    GiftCertificate,
    IssuePause,
    SelftestAlert,
    SelftestProbe,
    SigninLink,
    TurnaroundNotice,
)


class RawMessage(Base):
    """Every message exactly as it arrived; durable before anything is acknowledged."""

    __tablename__ = "raw_messages"
    # One row per message in the whole deployment, whichever mailboxes and paths it
    # reached: later copies are recorded in raw_message_copies.
    __table_args__ = (UniqueConstraint("dedupe_key", name="uq_raw_messages_dedupe_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(100))
    dedupe_key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    source: Mapped[str] = mapped_column(String(20))  # smtp, lmtp, imap, pipe, import
    envelope_from: Mapped[str | None] = mapped_column(String(320))
    envelope_to: Mapped[list] = mapped_column(default=list)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # pending -> done | quarantined; quarantined -> pending (retry) | discarded
    state: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    stage: Mapped[str | None] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime | None]
    # What the pipeline made of it when it was not an interaction of its own.
    outcome: Mapped[str | None] = mapped_column(String(40))


class RawMessageCopy(Base):
    """A later copy of a stored message (same Message-ID, or the same bytes): nothing new is
    made of it, but the audit trail keeps where and how it came. One row per mailbox and path."""

    __tablename__ = "raw_message_copies"
    __table_args__ = (UniqueConstraint("raw_message_id", "mailbox", "source", name="uq_raw_message_copies_copy"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    raw_message_id: Mapped[int] = mapped_column(ForeignKey("raw_messages.id"))
    mailbox: Mapped[str] = mapped_column(String(100))  # the mailbox this copy was delivered to
    source: Mapped[str] = mapped_column(String(20))  # smtp, lmtp, imap, pipe, import
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Customer(Base):
    """An identification record: registered user or not, recognised by any address."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    postal_code: Mapped[str | None] = mapped_column(String(20))
    phone: Mapped[str | None] = mapped_column(String(50))
    other_id_info: Mapped[str | None] = mapped_column(Text)
    registered_user_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    tags: Mapped[list] = mapped_column(default=list)
    language: Mapped[str | None] = mapped_column(String(20))
    time_zone: Mapped[str | None] = mapped_column(String(50))
    birthday: Mapped[date | None] = mapped_column(Date)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # What the site knows (`customers import`); SKUs and mailing lists are CustomerSiteFact rows.
    last_visit: Mapped[date | None] = mapped_column(Date, index=True)
    total_spent: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    currency: Mapped[str | None] = mapped_column(String(3))
    # No bulk mail (campaigns) since then: the customer unsubscribed.
    opted_out_at: Mapped[datetime | None]

    addresses: Mapped[list[CustomerAddress]] = relationship(
        back_populates="customer", order_by="CustomerAddress.id", cascade="all, delete-orphan"
    )


class CustomerAddress(Base):
    __tablename__ = "customer_addresses"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))  # as first seen
    # The comparison form (lowercased domain, folded per config); unique.
    key: Mapped[str] = mapped_column(String(320), unique=True)
    failing_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="addresses")


class Rep(Base):
    """A customer-service representative, kept in step with the config."""

    __tablename__ = "reps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    aliases: Mapped[list] = mapped_column(default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Category(Base):
    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")


class Issue(Base):
    __tablename__ = "issues"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(10), default="open", index=True)  # open, pending, closed
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"))
    priority: Mapped[str] = mapped_column(String(10), default="normal")
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("reps.id"))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    mailbox: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list] = mapped_column(default=list)
    cc: Mapped[list] = mapped_column(default=list)
    order_id: Mapped[str | None] = mapped_column(String(100))
    gift_certificate_id: Mapped[str | None] = mapped_column(String(100))
    # Set when the issue was merged into another (status "merged"): mail threading here lands there.
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id"))
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Turnaround (desk/turnaround.py): the first rep reply queued to the customer, and
    # both times in business seconds under the issue's calendar, with pauses taken out.
    first_response_at: Mapped[datetime | None]
    first_response_seconds: Mapped[int | None] = mapped_column(Integer)
    resolution_seconds: Mapped[int | None] = mapped_column(Integer)
    breached_at: Mapped[datetime | None]  # when a turnaround target was first missed

    category: Mapped[Category] = relationship()
    customer: Mapped[Customer | None] = relationship()
    assignee: Mapped[Rep | None] = relationship()


class Interaction(Base):
    """One mail (or call, or note) between the customer and customer service."""

    __tablename__ = "interactions"

    id: Mapped[int] = mapped_column(primary_key=True)
    direction: Mapped[str] = mapped_column(String(10))  # inbound, outbound, internal
    channel: Mapped[str] = mapped_column(String(10), default="email")  # email, phone, note, web
    mailbox: Mapped[str | None] = mapped_column(String(100))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    rep_id: Mapped[int | None] = mapped_column(ForeignKey("reps.id"))
    from_name: Mapped[str] = mapped_column(String(200), default="")
    from_email: Mapped[str | None] = mapped_column(String(320))
    to: Mapped[list] = mapped_column(default=list)
    cc: Mapped[list] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    date: Mapped[datetime | None]
    message_id: Mapped[str | None] = mapped_column(String(255), index=True)
    in_reply_to: Mapped[str | None] = mapped_column(String(255))
    references: Mapped[list] = mapped_column(default=list)
    full_text: Mapped[str] = mapped_column(Text, default="")
    new_text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text, deferred=True)
    auto: Mapped[str | None] = mapped_column(String(100))  # why it counts as automatic
    auto_generated: Mapped[bool] = mapped_column(Boolean, default=False)
    bounce: Mapped[dict | None]
    mailing_list: Mapped[str | None] = mapped_column(String(255))
    thread_reason: Mapped[str | None] = mapped_column(String(20))
    defects: Mapped[list] = mapped_column(default=list)
    raw_message_id: Mapped[int | None] = mapped_column(ForeignKey("raw_messages.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    actions: Mapped[list[Action]] = relationship(back_populates="interaction", order_by="Action.id")
    attachments: Mapped[list[Attachment]] = relationship(order_by="Attachment.id")


class Action(Base):
    """The part of one interaction that deals with one issue (many-to-many)."""

    __tablename__ = "actions"
    __table_args__ = (UniqueConstraint("issue_id", "interaction_id", name="uq_actions_issue_interaction"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"), index=True)
    interaction_id: Mapped[int] = mapped_column(ForeignKey("interactions.id"), index=True)
    follow_up_required: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    issue: Mapped[Issue] = relationship()
    interaction: Mapped[Interaction] = relationship(back_populates="actions")


class ActionPick(Base):
    """A value a rep picked from a configured picklist (#type, #used, #log's channel) for one action."""

    __tablename__ = "action_picks"
    __table_args__ = (UniqueConstraint("action_id", "picklist", "value", name="uq_action_picks_pick"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    action_id: Mapped[int] = mapped_column(ForeignKey("actions.id"))
    picklist: Mapped[str] = mapped_column(String(50))
    value: Mapped[str] = mapped_column(String(200))


class Blob(Base):
    """Attachment content, stored once however many mails carry it."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    interaction_id: Mapped[int] = mapped_column(ForeignKey("interactions.id"), index=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    content_id: Mapped[str | None] = mapped_column(String(255))
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    size: Mapped[int] = mapped_column(Integer)

    blob: Mapped[Blob] = relationship()


class OutboxMessage(Base):
    """A mail waiting to leave, or that has left: every byte fixed when queued.

    The Message-ID and the whole message are decided before the first attempt,
    so a resend after a crash is the same mail, never a second one.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))  # acknowledgement, notification, auto, reply, failure
    mailbox: Mapped[str] = mapped_column(String(100))
    issue_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id"), index=True)
    interaction_id: Mapped[int | None] = mapped_column(ForeignKey("interactions.id"))
    rep_id: Mapped[int | None] = mapped_column(ForeignKey("reps.id"))
    envelope_from: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[list] = mapped_column(default=list)
    # The first recipient in comparison form: counts automatic mail per address.
    recipient_key: Mapped[str] = mapped_column(String(320), index=True)
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    auto: Mapped[bool] = mapped_column(Boolean, default=False)
    to_customer: Mapped[bool] = mapped_column(Boolean, default=False)
    # queued, held, sending, sent, failed, unknown (delivery ambiguous twice: never sent again)
    status: Mapped[str] = mapped_column(String(10), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    deadline_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sending_since: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    # A claim is a lease: the sender that owns the row, and until when. Nobody
    # else touches a "sending" row while its lease is valid.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    # Times the row was sent again after an ambiguous attempt (lease expired
    # mid-send); at most once in its life.
    resends: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Per-recipient outcome of the last attempt: address -> {"code", "text"}.
    results: Mapped[dict | None]
    # The Subject as queued, for listing notices to reps beside an issue (they are no interactions).
    subject: Mapped[str | None] = mapped_column(Text)

    interaction: Mapped[Interaction | None] = relationship()


Index("ix_issues_updated", Issue.updated_at)
# The reports' date ranges (migration 0009).
Index("ix_issues_opened_at", Issue.opened_at)
Index("ix_issues_closed_at", Issue.closed_at)
Index("ix_interactions_created_at", Interaction.created_at)
