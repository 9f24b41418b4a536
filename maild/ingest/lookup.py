"""Read-only database lookups the pure stages call (identify, thread)."""

from __future__ import annotations

from typing import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..models import Action, Customer, CustomerAddress, Interaction, Issue


class DbLookup:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.conn = session.connection()  # plain statements: this runs per message

    def live_customer_by_key(self, key: str) -> int | None:
        """The record owning an address, never a merged one: what it was merged into.

        One indexed lookup; merge chains are followed only when the owner was merged.
        """
        row = self.conn.execute(
            select(CustomerAddress.customer_id, Customer.merged_into_id)
            .join(Customer, Customer.id == CustomerAddress.customer_id)
            .where(CustomerAddress.key == key)
        ).first()
        if row is None:
            return None
        customer_id, merged_into = row
        for _ in range(50):  # a chain never loops; the bound only guards bad data
            if merged_into is None:
                break
            customer_id = merged_into
            merged_into = self.conn.scalar(select(Customer.merged_into_id).where(Customer.id == customer_id))
        return customer_id

    def issues_by_message_ids(self, ids: Sequence[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(i for i in ids if i))[:200]
        if not ids:
            return {}
        rows = self.conn.execute(
            select(Interaction.message_id, func.min(Action.issue_id))
            .join(Action, Action.interaction_id == Interaction.id)
            .where(Interaction.message_id.in_(ids))
            .group_by(Interaction.message_id)
        )
        return {mid: issue_id for mid, issue_id in rows}

    def issue_status(self, issue_id: int) -> str | None:
        return self.conn.scalar(select(Issue.status).where(Issue.id == issue_id))

    def is_participant(self, issue_id: int, customer_id: int | None, email: str) -> bool:
        issue = self.session.get(Issue, issue_id)
        if issue is None:
            return False
        if customer_id is not None and issue.customer_id == customer_id:
            return True
        email = email.lower()
        if email in (c.lower() for c in issue.cc):
            return True
        sender = self.conn.scalar(
            select(Interaction.id)
            .join(Action, Action.interaction_id == Interaction.id)
            .where(Action.issue_id == issue_id, func.lower(Interaction.from_email) == email)
            .limit(1)
        )
        return sender is not None
