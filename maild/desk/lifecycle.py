"""The pending life cycle: the customer's answer reopens, silence closes.

A rep sets an issue `pending` while waiting for the customer. The customer's
reply makes it `open` again (and the notification of that reply reaches the
assignee as usual), so it is never lost under `--status pending`. A mailbox's
`pending_close_days` closes the pending issues the customer never answered:
the customer gets the `pending_closed` template saying how to reopen (reply
to it), and the close is recorded as a note on the issue. Time is a
parameter (`now`), so the rule is tested without waiting; the daemon runs it
as a scheduled job. This module never decides notifications.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from maild.config import MailboxConfig, Settings
from maild.ingest.stages.records import Stored
from maild.models import Action, Interaction, Issue, utcnow
from maild.outbound.compose import Outgoing
from maild.outbound.decide import reply_subject, with_tag
from maild.outbound.outbox import OutboxPolicy, auto_allowed, enqueue, record_note
from maild.outbound.templates import Templates
from maild.subjects import subject_tag

log = logging.getLogger("maild.desk")

BATCH = 200  # issues closed per mailbox and transaction; the rest wait for the next run
INTERVAL = 3600.0  # seconds between runs in the daemon


def wake_pending(session: Session, stored: Stored) -> bool:
    """A customer's own mail on a pending issue makes it open again; True when it did."""
    if (stored.issue_id is None or stored.customer_id is None or stored.rep_id is not None or stored.auto
            or stored.new_issue):  # a new issue was never pending
        return False
    issue = session.get_one(Issue, stored.issue_id)
    if issue.status != "pending":
        return False
    issue.status, issue.updated_at = "open", utcnow()
    log.info("issue=%s pending -> open on the customer's reply", issue.id)
    return True


def _last_contact():
    """When the issue last had correspondence with the customer (either way)."""
    return (
        select(func.max(Interaction.created_at))
        .join(Action, Action.interaction_id == Interaction.id)
        .where(Action.issue_id == Issue.id, Interaction.direction.in_(("inbound", "outbound")))
        .scalar_subquery()
    )


class PendingCloser:
    """Closes pending issues whose customer has been silent for the mailbox's `pending_close_days`."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], templates: Templates) -> None:
        self.settings = settings
        self.sessions = sessions
        self.templates = templates
        self.policy = OutboxPolicy.from_settings(settings)

    def run(self, now: datetime | None = None) -> int:
        """Close what is due at `now` (default: the current time); the number closed."""
        now = now or utcnow()
        closed = 0
        for mailbox in self.settings.mailbox:
            if mailbox.pending_close_days is None:
                continue
            cutoff = now - timedelta(days=mailbox.pending_close_days)
            with self.sessions() as session, session.begin():
                for issue in self._due(session, mailbox.name, cutoff):
                    self._close(session, issue, mailbox, now)
                    closed += 1
        if closed:
            log.info("closed %d pending issue(s) the customer never answered", closed)
        return closed

    def _due(self, session: Session, mailbox: str, cutoff: datetime) -> list[Issue]:
        last = _last_contact()
        q = (select(Issue)
             .where(Issue.status == "pending", Issue.mailbox == mailbox, Issue.updated_at < cutoff,
                    or_(last.is_(None), last < cutoff))
             .order_by(Issue.id).limit(BATCH))
        if session.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)  # a customer's reply being stored wins
        return list(session.scalars(q))

    def _close(self, session: Session, issue: Issue, mailbox: MailboxConfig, now: datetime) -> None:
        days = mailbox.pending_close_days or 0
        issue.status, issue.closed_at, issue.updated_at = "closed", now, now
        customer = issue.customer
        address = customer.addresses[0].email if customer and customer.addresses else None
        tag = subject_tag(self.settings.threading.tag_prefix, issue.id)
        told = ""
        if address and auto_allowed(session, self.policy, address, now):
            r = self.templates.render(
                "pending_closed", subject=reply_subject(issue.subject), issue_id=issue.id,
                customer_name=customer.name if customer else "", days=f"{days:g}", signature=mailbox.signature,
                mailbox_address=mailbox.address,
            )
            in_reply_to, references = self._thread(session, issue)
            enqueue(session, Outgoing(
                kind="pending-closed", mailbox=issue.mailbox, to=(address,), subject=with_tag(r.subject, tag),
                body=r.body, issue_id=issue.id, in_reply_to=in_reply_to, references=references,
                auto=True, to_customer=True,
            ), self.policy)
            told = f"; {address} was told how to reopen it"
        text = f"Closed automatically: pending for {days:g} days without an answer from the customer{told}.\n"
        record_note(session, Outgoing(kind="pending-closed", mailbox=issue.mailbox, to=(), subject=with_tag(
            f"Closed: {issue.subject}", tag), body=text, issue_id=issue.id), self.policy)
        log.info("issue=%s closed after %s days pending", issue.id, f"{days:g}")

    def _thread(self, session: Session, issue: Issue) -> tuple[str | None, tuple[str, ...]]:
        """The newest mail of the conversation with the customer, to answer in its thread."""
        last = session.scalar(
            select(Interaction).join(Action, Action.interaction_id == Interaction.id)
            .where(Action.issue_id == issue.id, Interaction.direction.in_(("inbound", "outbound")),
                   Interaction.message_id.is_not(None), Interaction.channel == "email")
            .order_by(Interaction.id.desc()).limit(1)
        )
        if last is None or last.message_id is None:
            return None, ()
        return last.message_id, (*last.references[-20:], last.message_id)
