"""Campaigns: one template to a segment, queued through the outbox, throttled and resumable.

`create` writes the campaign and one recipient row per customer (INSERT ...
SELECT from the segment: unique per campaign by record and by address) in
one transaction. `queue` then takes pending recipients a chunk at a time; for
each it opens an issue closed at once (the seed's rule for automatic email),
issues the gift certificate, renders the template and queues the outbox row,
and marks the recipient queued, all in the chunk's transaction. A crash loses
at most the chunk in hand, which was never committed: `resume` queues what
is still pending, and nobody is queued twice. Throttling is each row's
`not_before` in the outbox, so the daemon's sender paces the campaign and no
process has to stay up for it. Cancelling stops what is still pending or
queued in the outbox; what a sender holds already goes out.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from maild.addresses import AddressRules
from maild.bulk.gifts import Gift, issue_gift
from maild.bulk.segments import Audience, Segment
from maild.config import MailboxConfig, Settings
from maild.models import (
    Campaign, CampaignRecipient, Category, Customer, CustomerSiteFact, Issue, OutboxMessage, Rep, table_of, utcnow,
)
from maild.outbound.compose import Outgoing
from maild.outbound.decide import with_tag
from maild.outbound.outbox import OutboxPolicy, enqueue
from maild.outbound.templates import Templates
from maild.subjects import subject_tag
from maild.timefmt import aware, iso
from maild.tokens import TokenSigner

log = logging.getLogger("maild.bulk")

CHUNK = 200  # recipients per transaction while queueing
SAMPLE = 10
_r = table_of(CampaignRecipient)


class BulkError(Exception):
    """A campaign cannot be previewed, sent or changed as asked."""


@dataclass(frozen=True)
class Plan:
    """What `maild bulk send` asks for."""

    template: str
    segment: Segment
    gift: Gift | None = None
    rate: int | None = None  # per minute; None: the config's bulk.rate


@dataclass(frozen=True)
class Preview:
    count: int
    excluded: dict[str, int]
    sample: list[dict]

    def as_json(self) -> dict:
        return {"count": self.count, "excluded": self.excluded, "sample": self.sample}


def _customer_vars(c: Customer, email: str, facts: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "id": c.id, "name": c.name, "email": email, "registered_user_id": c.registered_user_id,
        "language": c.language, "time_zone": c.time_zone, "tags": list(c.tags),
        "last_visit": c.last_visit.isoformat() if c.last_visit else None,
        "total_spent": f"{c.total_spent:.2f}" if c.total_spent is not None else None, "currency": c.currency,
        "products_bought": facts.get("bought", []), "products_viewed": facts.get("viewed", []),
        "mailing_lists": facts.get("list", []),
    }


def _facts(session: Session, ids: list[int]) -> dict[int, dict[str, list[str]]]:
    out: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    q = (select(CustomerSiteFact.customer_id, CustomerSiteFact.kind, CustomerSiteFact.value)
         .where(CustomerSiteFact.customer_id.in_(ids)).order_by(CustomerSiteFact.id))
    for cid, kind, value in session.execute(q):
        out[cid][kind].append(value)
    return out


def audience(session: Session, settings: Settings, segment: Segment) -> Audience:
    """The segment against this moment's rules: reps' and our own addresses never get a campaign."""
    rules = OutboxPolicy.from_settings(settings).rules
    reserved = {rules.key(a) for a in settings.own_addresses}
    for rep in session.scalars(select(Rep)):
        reserved |= {rules.key(a) for a in (rep.email, *rep.aliases)}
    reserved |= {rules.key(a) for r in settings.rep for a in (r.email, *r.aliases)}
    return Audience(segment, session.get_bind().dialect.name, frozenset(reserved), utcnow())


def preview(session: Session, settings: Settings, segment: Segment, sample: int = SAMPLE) -> Preview:
    """The segment's count, who is left out by reason, and the first members: two queries."""
    found = audience(session, settings, segment)
    counts = {reason: n for reason, n in session.execute(found.counts())}
    members = counts.pop(None, 0)
    rows = session.execute(found.recipients().limit(sample))
    return Preview(members, {k: counts[k] for k in sorted(counts)},
                   [{"id": cid, "name": name, "email": email} for cid, name, email, _ in rows])


class Campaigns:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], templates: Templates,
                 signer: TokenSigner | None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.templates = templates
        self.signer = signer
        self.policy = OutboxPolicy.from_settings(settings)
        self.rules: AddressRules = self.policy.rules
        self.mailbox: MailboxConfig = settings.mailbox_named(settings.bulk.mailbox or settings.mailbox[0].name)

    def audience(self, session: Session, segment: Segment) -> Audience:
        return audience(session, self.settings, segment)

    # -- rendering ------------------------------------------------------------------

    def _unsubscribe(self, issue_id: int) -> tuple[str, tuple[tuple[str, str], ...]]:
        if self.signer is None:
            raise BulkError(f"campaigns need the reply-token secret ({self.settings.security.secret_env}) "
                            "to sign their unsubscribe addresses")
        address = self.signer.address(self.mailbox.address, issue_id, None, "unsubscribe")
        # The signed mailto (RFC 2369) is handled by maild's own intake. With the web console
        # reachable over https, the same token also makes an RFC 8058 one-click link.
        targets = [f"<mailto:{address}?subject=unsubscribe>"]
        web = self.settings.web
        one_click = bool(web.listen and web.public_url and web.public_url.lower().startswith("https://"))
        if one_click and web.public_url:
            token = self.signer.token(issue_id, None, "unsubscribe")
            targets.insert(0, f"<{web.public_url.rstrip('/')}/unsubscribe/{token}>")
        headers: tuple[tuple[str, str], ...] = (("List-Unsubscribe", ", ".join(targets)), ("Precedence", "bulk"))
        if one_click:
            headers += (("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),)
        return address, headers

    def render(self, template: str, customer: dict, gift: dict | None, issue_id: int | None,
               unsubscribe: str) -> tuple[str, str]:
        r = self.templates.render(
            template, customer=customer, customer_name=customer["name"], gift=gift, issue_id=issue_id,
            unsubscribe_address=unsubscribe, signature=self.mailbox.signature,
            mailbox_address=self.mailbox.address,
        )
        return r.subject, r.body

    def check_template(self, plan: Plan) -> None:
        """Render the template once with made-up values, so a broken one fails before anything is queued."""
        customer = {"id": 0, "name": "Pat Example", "email": "pat@example.com", "registered_user_id": None,
                    "language": None, "time_zone": None, "tags": [], "last_visit": None, "total_spent": None,
                    "currency": None, "products_bought": [], "products_viewed": [], "mailing_lists": []}
        gift = ({"code": "SAMP-LECO-DEXX-XXXX", "amount": f"{plan.gift.amount:.2f}", "currency": plan.gift.currency,
                 "expires": plan.gift.expires.isoformat() if plan.gift.expires else None} if plan.gift else None)
        self.render(plan.template, customer, gift, 0, "unsubscribe@example.com")

    # -- a sample to a rep -------------------------------------------------------------

    def test_send(self, session: Session, plan: Plan, rep: str) -> OutboxMessage:
        """One rendered sample (the segment's first member, a sample gift code) to a rep, recorded nowhere else."""
        found = session.scalar(select(Rep).where((func.lower(Rep.email) == rep.lower()) | (Rep.name == rep)))
        if found is None:
            raise BulkError(f"no rep {rep!r}: --test-to takes a rep's name or address")
        audience = self.audience(session, plan.segment)
        first = session.execute(audience.recipients().limit(1)).first()
        if first is None:
            raise BulkError("the segment has nobody to send to; nothing sent")
        customer = session.get_one(Customer, first[0])
        facts = _facts(session, [customer.id]).get(customer.id, {})
        gift = None
        if plan.gift:
            gift = {"code": "SAMPLE-CODE-NOT-VALID", "amount": f"{plan.gift.amount:.2f}",
                    "currency": plan.gift.currency, "expires": plan.gift.expires.isoformat()
                    if plan.gift.expires else None}
        subject, body = self.render(plan.template, _customer_vars(customer, first[2], facts), gift, None,
                                    "(the unsubscribe address of each mail)")
        out = Outgoing(kind="campaign-test", mailbox=self.mailbox.name, to=(found.email,),
                       subject=f"[test] {subject}", body=body, rep_id=found.id, auto=True)
        return enqueue(session, out, self.policy)

    # -- a campaign ----------------------------------------------------------------------

    def create(self, session: Session, plan: Plan) -> Campaign:
        """The campaign and its recipients (the segment, now); the caller commits, then calls `queue`."""
        self._unsubscribe(0)  # no secret, no unsubscribe address: no campaign
        self.check_template(plan)
        campaign = Campaign(template=plan.template, mailbox=self.mailbox.name, segment=plan.segment.as_json(),
                            excluded={}, rate=plan.rate or self.settings.bulk.rate, status="queueing",
                            gift_amount=plan.gift.amount if plan.gift else None,
                            gift_currency=plan.gift.currency if plan.gift else None,
                            gift_expires=plan.gift.expires if plan.gift else None, created_at=utcnow())
        session.add(campaign)
        session.flush()
        audience = self.audience(session, plan.segment)
        counts = {reason: n for reason, n in session.execute(audience.counts())}
        counts.pop(None, None)
        campaign.excluded = {k: counts[k] for k in sorted(counts)}
        members = audience.recipients().subquery()
        session.execute(insert(_r).from_select(
            ["campaign_id", "customer_id", "email", "address_key", "state"],
            select(literal(campaign.id), members.c.id, members.c.email, members.c.key, literal("pending")),
        ))
        return campaign

    def _lock(self, session: Session, campaign_id: int) -> Campaign:
        campaign = session.scalar(select(Campaign).where(Campaign.id == campaign_id).with_for_update())
        if campaign is None:
            raise BulkError(f"no campaign #{campaign_id}")
        return campaign

    def _next_due(self, session: Session, campaign: Campaign) -> tuple[datetime, timedelta]:
        step = timedelta(minutes=1) / campaign.rate if campaign.rate else timedelta(0)
        last = session.scalar(select(func.max(OutboxMessage.next_attempt_at)).join(
            CampaignRecipient, CampaignRecipient.outbox_id == OutboxMessage.id).where(
            CampaignRecipient.campaign_id == campaign.id, OutboxMessage.status == "queued"))
        now = utcnow()
        return (max(now, aware(last) + step) if last is not None else now), step

    def queue(self, campaign_id: int, progress: Callable[[int], None] | None = None,
              chunk: int = CHUNK) -> int:
        """Queue every pending recipient, a chunk per transaction; returns how many were queued now."""
        done = 0
        due: datetime | None = None
        step = timedelta(0)
        while True:
            with self.sessions() as session, session.begin():
                campaign = self._lock(session, campaign_id)
                if campaign.status != "queueing":
                    return done
                if due is None:
                    due, step = self._next_due(session, campaign)
                pending = list(session.scalars(
                    select(CampaignRecipient).where(CampaignRecipient.campaign_id == campaign_id,
                                                    CampaignRecipient.state == "pending")
                    .order_by(CampaignRecipient.id).limit(chunk)))
                if not pending:
                    campaign.status = "queued"
                    return done
                due = self._queue_chunk(session, campaign, pending, due, step)
            done += len(pending)
            if progress:
                progress(len(pending))

    def _queue_chunk(self, session: Session, campaign: Campaign, pending: list[CampaignRecipient],
                     due: datetime, step: timedelta) -> datetime:
        ids = [r.customer_id for r in pending]
        customers = {c.id: c for c in session.scalars(select(Customer).where(Customer.id.in_(ids)))}
        # Chosen when the campaign was made; queued perhaps much later (resume): re-check the opt-outs.
        for r in pending:
            c = customers.get(r.customer_id)
            if c is None or c.opted_out_at is not None or c.merged_into_id is not None:
                r.state = "cancelled"
        pending = [r for r in pending if r.state != "cancelled"]
        if not pending:
            return due
        facts = _facts(session, ids)
        gift = (Gift(campaign.gift_amount, campaign.gift_currency, campaign.gift_expires)
                if campaign.gift_amount is not None and campaign.gift_currency else None)
        category_id = session.scalar(select(Category.id).where(Category.name == self.mailbox.category))
        now = utcnow()
        # The chunk's issues, then its certificates, each in one flush (batched inserts).
        issues = [Issue(mailbox=self.mailbox.name, subject="", category_id=category_id, customer_id=r.customer_id,
                        status="closed", opened_at=now, closed_at=now, updated_at=now, tags=[], cc=[])
                  for r in pending]
        session.add_all(issues)
        session.flush()
        gifts = [issue_gift(session, gift, r.customer_id, r.email, campaign.id, issue.id) if gift else None
                 for r, issue in zip(pending, issues)]
        session.flush()
        for r, issue, gift_row in zip(pending, issues, gifts):
            c = customers[r.customer_id]
            gift_vars = None
            if gift_row is not None:
                issue.gift_certificate_id = gift_row.code
                gift_vars = {"code": gift_row.code, "amount": f"{gift_row.amount:.2f}",
                             "currency": gift_row.currency,
                             "expires": gift_row.expires.isoformat() if gift_row.expires else None}
            address, headers = self._unsubscribe(issue.id)
            subject, body = self.render(campaign.template, _customer_vars(c, r.email, facts.get(c.id, {})),
                                        gift_vars, issue.id, address)
            issue.subject = subject
            out = Outgoing(kind="campaign", mailbox=self.mailbox.name, to=(r.email,),
                           subject=with_tag(subject, subject_tag(self.settings.threading.tag_prefix, issue.id)),
                           body=body, issue_id=issue.id, auto=True, to_customer=True, headers=headers)
            row = enqueue(session, out, self.policy, not_before=due)
            r.state, r.issue_id, r.outbox_id = "queued", issue.id, row.id
            due += step
        return due

    def cancel(self, campaign_id: int) -> dict[str, int]:
        """Stop a campaign: pending recipients and queued outbox rows are cancelled."""
        with self.sessions() as session, session.begin():
            campaign = self._lock(session, campaign_id)
            if campaign.status == "cancelled":
                raise BulkError(f"campaign #{campaign_id} is cancelled already")
            campaign.status, campaign.cancelled_at = "cancelled", utcnow()
            pending = session.connection().execute(
                update(_r).where(_r.c.campaign_id == campaign_id, _r.c.state == "pending")
                .values(state="cancelled")).rowcount
            rows = select(_r.c.outbox_id).where(_r.c.campaign_id == campaign_id, _r.c.state == "queued")
            stopped = session.connection().execute(update(OutboxMessage).where(
                OutboxMessage.id.in_(rows), OutboxMessage.status == "queued").values(
                status="cancelled", last_error=f"campaign #{campaign_id} cancelled")).rowcount
            cancelled_rows = select(OutboxMessage.id).where(OutboxMessage.id.in_(rows),
                                                            OutboxMessage.status == "cancelled")
            session.execute(update(_r).where(_r.c.campaign_id == campaign_id, _r.c.outbox_id.in_(cancelled_rows))
                            .values(state="cancelled"))
        return {"pending": pending, "outbox": stopped}


def campaign_json(session: Session, c: Campaign) -> dict:
    by_state: dict[str, int] = dict(session.execute(select(_r.c.state, func.count()).where(_r.c.campaign_id == c.id)
                                    .group_by(_r.c.state)).all())
    outbox: dict[str, int] = dict(session.execute(
        select(OutboxMessage.status, func.count()).join(_r, _r.c.outbox_id == OutboxMessage.id)
        .where(_r.c.campaign_id == c.id).group_by(OutboxMessage.status)).all())
    state = c.status
    if state == "queued" and not outbox.get("queued") and not outbox.get("sending"):
        state = "done"
    return {
        "id": c.id, "template": c.template, "mailbox": c.mailbox, "status": state,
        "segment": c.segment, "excluded": c.excluded, "rate": c.rate,
        "gift": ({"amount": f"{c.gift_amount:.2f}", "currency": c.gift_currency,
                  "expires": c.gift_expires.isoformat() if c.gift_expires else None}
                 if c.gift_amount is not None else None),
        "recipients": sum(by_state.values()),
        "pending": by_state.get("pending", 0), "queued": by_state.get("queued", 0),
        "cancelled": by_state.get("cancelled", 0),
        "sent": outbox.get("sent", 0), "waiting": outbox.get("queued", 0) + outbox.get("sending", 0),
        "failed": outbox.get("failed", 0) + outbox.get("unknown", 0),
        "created": iso(c.created_at), "cancelled_at": iso(c.cancelled_at),
    }


def list_campaigns(session: Session) -> list[dict]:
    return [campaign_json(session, c) for c in session.scalars(select(Campaign).order_by(Campaign.id))]
