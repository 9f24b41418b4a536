"""The back office's tables: sign-in links for the console, site facts, campaigns and their
recipients, gift certificates, turnaround pauses and notices, self-test probes and alerts,
canned-response uses and digest runs. Mapped on the same Base as the helpdesk's own tables
(maild/models.py re-exports them, so importing the models registers every table).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Date, Float, ForeignKey, Index, Integer, Numeric, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from maild.models_base import Base, utcnow


class SigninLink(Base):
    """A one-time sign-in link mailed to a rep for the web console (maild/web/signin.py).

    Only the SHA-256 of the link's secret part is kept; the link works once
    (used_at is set by the sign-in that uses it) and until expires_at.
    """

    __tablename__ = "signin_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    rep_id: Mapped[int] = mapped_column(ForeignKey("reps.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]



class CustomerSiteFact(Base):
    """A product a customer bought or viewed, or a mailing list they are on, as the site says."""

    __tablename__ = "customer_site_facts"
    __table_args__ = (
        UniqueConstraint("customer_id", "kind", "value", name="uq_customer_site_facts_fact"),
        Index("ix_customer_site_facts_kind_value", "kind", "value"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # bought, viewed, list
    value: Mapped[str] = mapped_column(String(100))  # a SKU or a list name


class Campaign(Base):
    """A bulk mail to a segment of customers (maild/bulk)."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    template: Mapped[str] = mapped_column(String(100))
    mailbox: Mapped[str] = mapped_column(String(100))
    segment: Mapped[dict] = mapped_column(default=dict)  # the flags it was sent with
    excluded: Mapped[dict] = mapped_column(default=dict)  # reason -> records left out
    gift_amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    gift_currency: Mapped[str | None] = mapped_column(String(3))
    gift_expires: Mapped[date | None] = mapped_column(Date)
    rate: Mapped[int | None] = mapped_column(Integer)  # mails per minute; None: as fast as the sender goes
    # queueing (recipients being queued; `bulk resume` continues), queued, cancelled
    status: Mapped[str] = mapped_column(String(12), default="queueing")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    cancelled_at: Mapped[datetime | None]


class CampaignRecipient(Base):
    """One customer of a campaign: queued at most once, with its outbox row, in one transaction."""

    __tablename__ = "campaign_recipients"
    __table_args__ = (
        UniqueConstraint("campaign_id", "customer_id", name="uq_campaign_recipients_customer"),
        UniqueConstraint("campaign_id", "address_key", name="uq_campaign_recipients_address"),
        Index("ix_campaign_recipients_state", "campaign_id", "state", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    address_key: Mapped[str] = mapped_column(String(320))
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending, queued, cancelled
    issue_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id"))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))


class GiftCertificate(Base):
    """A gift certificate issued to a customer, usually with a campaign; the shop redeems it by code."""

    __tablename__ = "gift_certificates"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3))
    expires: Mapped[date | None] = mapped_column(Date)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    issue_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id"))
    email: Mapped[str] = mapped_column(String(320))
    state: Mapped[str] = mapped_column(String(10), default="issued")  # issued, void
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    voided_at: Mapped[datetime | None]


class IssuePause(Base):
    """A stretch during which an issue was pending (waiting for the customer): its clock stops."""

    __tablename__ = "issue_pauses"

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]


class TurnaroundNotice(Base):
    """A reminder or an escalation sent for one issue and target: one row each, ever.

    The unique key is inserted in the transaction that queues the mail, so two
    daemons, or one restarted, never send the same notice twice. An escalation
    row is the recorded breach that reports count.
    """

    __tablename__ = "turnaround_notices"
    __table_args__ = (UniqueConstraint("issue_id", "target", "kind", name="uq_turnaround_notices_once"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"), index=True)
    target: Mapped[str] = mapped_column(String(20))  # first_response, resolution
    kind: Mapped[str] = mapped_column(String(20))  # reminder, escalation
    elapsed_seconds: Mapped[int] = mapped_column(Integer)  # business seconds when it was decided
    target_seconds: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SelftestProbe(Base):
    """One signed probe sent to one support address, and when (and by which path) it came back."""

    __tablename__ = "selftest_probes"
    __table_args__ = (Index("ix_selftest_probes_address", "address", "queued_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    mailbox: Mapped[str] = mapped_column(String(100))
    address: Mapped[str] = mapped_column(String(320))
    trigger: Mapped[str] = mapped_column(String(20))  # schedule, manual
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    deadline_at: Mapped[datetime]
    returned_at: Mapped[datetime | None]
    returned_via: Mapped[str | None] = mapped_column(String(20))  # smtp, lmtp, imap, pipe
    round_trip: Mapped[float | None] = mapped_column(Float)  # seconds from leaving the outbox to the intake


class SelftestAlert(Base):
    """An address whose probes stopped coming back in time, alerted once; the row goes when it recovers."""

    __tablename__ = "selftest_alerts"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(100))
    since: Mapped[datetime] = mapped_column(default=utcnow)

class CannedUse(Base):
    """One canned response inserted into a rep's reply or note: what the resources report counts."""

    __tablename__ = "canned_uses"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"), index=True)
    interaction_id: Mapped[int | None] = mapped_column(ForeignKey("interactions.id"))  # the rep's mail
    rep_id: Mapped[int | None] = mapped_column(ForeignKey("reps.id"))
    used_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DigestRun(Base):
    """A mailed digest's period, sent: unique per digest and period, so it goes once across restarts and daemons."""

    __tablename__ = "digest_runs"
    __table_args__ = (UniqueConstraint("digest", "period", name="uq_digest_runs_period"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(100))
    period: Mapped[str] = mapped_column(String(40))  # "2024-05-06" (daily) or "2024-W19" (weekly)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
