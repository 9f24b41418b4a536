"""Opt-outs: a customer who unsubscribes gets no campaign again.

The ingest pipeline recognises mail to a campaign's signed unsubscribe
address (a reply token of purpose "unsubscribe" naming the campaign issue)
and stores it as automatic mail on that issue; the desk's emit hook calls
`opt_out` in the same transaction. Nothing here sends mail: an unsubscribe is
never acknowledged.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from maild.models import Customer, Issue, OutboxMessage, utcnow

log = logging.getLogger("maild.bulk")


def opt_out(session: Session, issue_id: int) -> int | None:
    """Record the opt-out on the record of the issue's customer (the record it was merged into, if so)."""
    issue = session.get(Issue, issue_id)
    if issue is None or issue.customer_id is None:
        log.warning("unsubscribe for issue %s, which has no customer: nothing recorded", issue_id)
        return None
    customer = session.get_one(Customer, issue.customer_id)
    while customer.merged_into_id is not None:
        customer = session.get_one(Customer, customer.merged_into_id)
    if customer.opted_out_at is None:
        customer.opted_out_at = utcnow()
        log.info("opted out customer=%s issue=%s", customer.id, issue_id)
    # Campaign mail to them still waiting in the outbox (a throttled campaign) is not sent.
    theirs = select(Issue.id).where(Issue.customer_id.in_(
        select(Customer.id).where((Customer.id == customer.id) | (Customer.merged_into_id == customer.id))))
    stopped = session.connection().execute(
        update(OutboxMessage).where(OutboxMessage.kind == "campaign", OutboxMessage.status == "queued",
                                    OutboxMessage.issue_id.in_(theirs))
        .values(status="cancelled", last_error="the customer opted out of bulk mail")).rowcount
    if stopped:
        log.info("opted out customer=%s: %d queued campaign mail(s) cancelled", customer.id, stopped)
    return customer.id
