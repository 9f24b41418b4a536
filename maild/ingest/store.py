"""The store stage: the only stage that writes.

Issue, interaction, action, attachments and the customer record go into the
caller's transaction together, so a message is recorded whole or not at all.
Automatic mail that threads nowhere, and our own mail coming back, are
recorded on the raw message only: they never open an issue.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..addresses import AddressRules
from ..models import Action, Attachment, Blob, Category, Customer, CustomerAddress, Interaction, Issue, RawMessage, utcnow
from .records import Classification, CustomerMatch, ParsedMessage, ThreadDecision


class NoSender(Exception):
    """A message with no usable From address that threads onto no issue."""


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


def _customer(session: Session, sender: CustomerMatch, rules: AddressRules) -> int | None:
    if sender.own_address or sender.is_rep:
        return None
    if sender.customer_id is not None:
        return sender.customer_id
    customer = Customer(name=sender.name or "")
    customer.addresses.append(CustomerAddress(email=sender.email, key=rules.key(sender.email)))
    session.add(customer)
    session.flush()
    return customer.id


def _new_issue(session: Session, raw: RawMessage, msg: ParsedMessage, category: str, customer_id, own) -> Issue:
    cat_id = session.scalar(select(Category.id).where(Category.name == category))
    if cat_id is None:
        cat_id = session.scalar(select(Category.id).where(Category.name == "uncategorized"))
    cc = [a.email for a in msg.cc if a.email.lower() not in own]
    issue = Issue(
        mailbox=raw.mailbox, subject=msg.subject, category_id=cat_id, customer_id=customer_id, cc=cc
    )
    session.add(issue)
    session.flush()
    return issue


def _attachments(session: Session, interaction: Interaction, msg: ParsedMessage) -> None:
    blobs: dict[str, Blob] = {}
    for att in msg.attachments:
        digest = att.sha256
        blob = blobs.get(digest) or session.get(Blob, digest)
        if blob is None:
            blob = Blob(sha256=digest, size=att.size, data=att.data)
            session.add(blob)
        blobs[digest] = blob
        session.add(
            Attachment(
                interaction_id=interaction.id,
                blob=blob,
                filename=att.filename,
                content_type=att.content_type[:255],
                content_id=(att.content_id or "")[:255] or None,
                inline=att.inline,
                size=att.size,
            )
        )


def _interaction(raw, msg, cls, sender, customer_id, decision) -> Interaction:
    return Interaction(
        direction="inbound",
        channel="email",
        mailbox=raw.mailbox,
        customer_id=customer_id,
        rep_id=sender.rep_id if sender else None,
        from_name=(sender.name if sender else "")[:200],
        from_email=sender.email if sender else None,
        to=[a.email for a in msg.to],
        cc=[a.email for a in msg.cc],
        subject=msg.subject,
        date=msg.date,
        message_id=msg.message_id,
        in_reply_to=msg.in_reply_to[0][:255] if msg.in_reply_to else None,
        references=list(msg.references[-50:]),
        full_text=msg.text,
        new_text=msg.new_text,
        html=msg.html,
        auto=cls.auto[:100] if cls.auto else None,
        auto_generated=cls.auto is not None,
        bounce=cls.bounce.as_json() if cls.bounce else None,
        mailing_list=cls.mailing_list[:255] if cls.mailing_list else None,
        thread_reason=decision.reason,
        defects=list(msg.defects),
        raw_message_id=raw.id,
    )


def _finish(raw: RawMessage, outcome: str) -> None:
    raw.state, raw.outcome, raw.processed_at = "done", outcome, utcnow()
    raw.stage = raw.error = None


def store(
    session: Session,
    raw: RawMessage,
    msg: ParsedMessage,
    cls: Classification,
    sender: CustomerMatch | None,
    decision: ThreadDecision,
    rules: AddressRules,
    own_addresses: frozenset[str],
) -> Stored:
    if cls.own_mail:
        _finish(raw, "own-mail")
        return Stored(raw.id, "own-mail", raw.mailbox, auto=cls.auto)
    if decision.issue_id is None and (cls.auto or cls.bounce):
        outcome = "unmatched-bounce" if cls.bounce else "unmatched-auto"
        _finish(raw, outcome)
        return Stored(raw.id, outcome, raw.mailbox, auto=cls.auto)
    if sender is None and decision.issue_id is None:
        raise NoSender("no From address, and nothing to thread it onto")
    customer_id = _customer(session, sender, rules) if sender and not cls.auto else (sender and sender.customer_id)
    issue = session.get(Issue, decision.issue_id) if decision.issue_id else None
    new_issue = issue is None
    if issue is None:
        issue = _new_issue(session, raw, msg, decision.category, customer_id, own_addresses)
    interaction = _interaction(raw, msg, cls, sender, customer_id, decision)
    session.add(interaction)
    session.flush()
    session.add(Action(issue_id=issue.id, interaction_id=interaction.id))
    _attachments(session, interaction, msg)
    reopened = False
    from_customer = sender is not None and not (sender.is_rep or sender.own_address)
    if issue.status == "closed" and from_customer and not cls.auto:
        issue.status, issue.closed_at, reopened = "open", None, True
    issue.updated_at = utcnow()
    _finish(raw, "interaction")
    session.flush()
    return Stored(
        raw.id, "interaction", raw.mailbox, issue.id, interaction.id, new_issue, reopened,
        customer_id, sender.rep_id if sender else None, cls.auto, decision.reason,
    )
