"""Automatic emails sent on request ("your order shipped"): `maild notify`.

As the seed has it, every mail to a customer is recorded: an automatic mail
goes onto the issue given, or onto a new issue that is closed at once so it
does not get in the way; the customer's reply to it reopens that issue.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild.config import MailboxConfig, Settings
from maild.subjects import subject_tag
from maild.models import Category, Customer, CustomerAddress, Issue, OutboxMessage, utcnow
from maild.outbound.compose import Outgoing
from maild.outbound.decide import with_tag
from maild.outbound.outbox import OutboxPolicy, auto_allowed, enqueue
from maild.outbound.templates import Templates


class NotifyError(Exception):
    """The automatic mail cannot be sent as asked."""


def _customer(session: Session, policy: OutboxPolicy, address: str) -> Customer:
    key = policy.rules.key(address)
    customer = session.scalar(
        select(Customer).join(CustomerAddress).where(CustomerAddress.key == key)
    )
    if customer is None:
        customer = Customer(name="")
        customer.addresses.append(CustomerAddress(email=address, key=key))
        session.add(customer)
        session.flush()
    while customer.merged_into_id is not None:  # a merged record's addresses belong to the one it went into
        customer = session.get_one(Customer, customer.merged_into_id)
    return customer


def _closed_issue(session: Session, mailbox: MailboxConfig, customer: Customer, subject: str) -> Issue:
    category_id = session.scalar(select(Category.id).where(Category.name == mailbox.category))
    now = utcnow()
    issue = Issue(mailbox=mailbox.name, subject=subject, category_id=category_id, customer_id=customer.id,
                  status="closed", opened_at=now, closed_at=now, updated_at=now)
    session.add(issue)
    session.flush()
    return issue


def send_automatic(
    session: Session, settings: Settings, templates: Templates, to: str, template: str,
    variables: dict[str, str], issue_id: int | None = None, mailbox_name: str | None = None,
) -> OutboxMessage:
    """Queue an automatic mail to `to` and record it; the caller commits."""
    policy = OutboxPolicy.from_settings(settings)
    if not auto_allowed(session, policy, to):
        raise NotifyError(f"{to} bounced recently or has had its automatic mail for today; nothing sent")
    issue = session.get(Issue, issue_id) if issue_id is not None else None
    if issue_id is not None and issue is None:
        raise NotifyError(f"no issue #{issue_id}")
    for _ in range(50):  # a merged issue's mail goes onto the issue it was merged into
        if issue is None or issue.merged_into_id is None:
            break
        issue = session.get_one(Issue, issue.merged_into_id)
    mailbox = settings.mailbox_named(mailbox_name or (issue.mailbox if issue else settings.mailbox[0].name))
    customer = _customer(session, policy, to)
    defaults = {"customer_name": customer.name, "signature": mailbox.signature, "mailbox_address": mailbox.address}
    rendered = templates.render(template, **(defaults | variables))
    if issue is None:
        issue = _closed_issue(session, mailbox, customer, rendered.subject)
    # The seed's references: `--var order_id=A-1001` links the issue to the order it is about.
    issue.order_id = (variables.get("order_id") or "").strip()[:100] or issue.order_id
    issue.gift_certificate_id = (variables.get("gift_certificate_id") or "").strip()[:100] or issue.gift_certificate_id
    out = Outgoing(
        kind="auto", mailbox=mailbox.name, to=(to,),
        subject=with_tag(rendered.subject, subject_tag(settings.threading.tag_prefix, issue.id)),
        body=rendered.body, issue_id=issue.id, auto=True, to_customer=True,
    )
    return enqueue(session, out, policy)
