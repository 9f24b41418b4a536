"""The store stage: the only stage that writes.

Issue, interaction, action, attachments and the customer record go into the
caller's transaction together, so a message is recorded whole or not at all.
Automatic mail that threads nowhere, and our own mail coming back, are
recorded on the raw message only: they never open an issue. Plain SQL
statements rather than the ORM's unit of work: this runs once per message on
the ingest hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ..addresses import AddressRules
from ..models import Action, Attachment, Blob, Category, Customer, CustomerAddress, Interaction, Issue, RawMessage, utcnow
from ..timefmt import aware
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
    source: str = ""  # the transport it came by: smtp, lmtp, imap, pipe, import
    token_rep_id: int | None = None  # the rep a valid reply token in its recipients names
    token_purpose: str | None = None  # reply, note or customer


def _insert(conn: Connection, model, **values) -> int:
    return conn.execute(insert(model.__table__).returning(model.__table__.c.id), values).scalar_one()


def _customer(conn: Connection, sender: CustomerMatch | None, cls: Classification, rules: AddressRules) -> int | None:
    """The sender's record: existing, new (for human mail from a customer), or none.

    When another transaction recorded the same new sender after identify
    looked (one mail delivered to two mailboxes at once), its record is the
    sender's: the address is claimed with ON CONFLICT, never a key violation.
    """
    if sender is None or sender.own_address or sender.is_rep:
        return None
    if sender.customer_id is not None or cls.auto:
        return sender.customer_id  # automatic mail never creates an identification record
    from sqlalchemy.dialects import postgresql, sqlite  # ON CONFLICT is per backend

    now, key = utcnow(), rules.key(sender.email)[:320]
    customer_id = _insert(conn, Customer, name=(sender.name or "")[:200], tags=[], created_at=now)
    addresses, customers = CustomerAddress.__table__, Customer.__table__
    claim = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(addresses)
    claimed = conn.execute(
        claim.values(customer_id=customer_id, email=sender.email[:320], key=key, created_at=now)
        .on_conflict_do_nothing(index_elements=[addresses.c.key]).returning(addresses.c.id)
    ).scalar()
    if claimed is None:
        conn.execute(customers.delete().where(customers.c.id == customer_id))
        customer_id = conn.scalar(select(addresses.c.customer_id).where(addresses.c.key == key))
    return customer_id


def _new_issue(conn: Connection, mailbox: str, msg: ParsedMessage, category: str, customer_id, own) -> int:
    ids = dict(conn.execute(select(Category.name, Category.id)).all())
    now = utcnow()
    return _insert(
        conn, Issue, mailbox=mailbox, subject=msg.subject, category_id=ids.get(category) or ids["uncategorized"],
        customer_id=customer_id, cc=[a.email for a in msg.cc if a.email.lower() not in own], tags=[],
        status="open", priority="normal", opened_at=now, updated_at=now,
    )


def _attachments(conn: Connection, interaction_id: int, msg: ParsedMessage) -> None:
    if not msg.attachments:
        return
    digests = {a.sha256 for a in msg.attachments}
    known = set(conn.scalars(select(Blob.sha256).where(Blob.sha256.in_(digests))))
    for att in msg.attachments:
        digest = att.sha256
        if digest not in known:
            conn.execute(insert(Blob.__table__), {"sha256": digest, "size": att.size, "data": att.data})
            known.add(digest)
        conn.execute(insert(Attachment.__table__), {
            "interaction_id": interaction_id, "sha256": digest, "filename": att.filename,
            "content_type": att.content_type[:255], "content_id": (att.content_id or "")[:255] or None,
            "inline": att.inline, "size": att.size,
        })


def _interaction(raw_id, mailbox, msg, cls, sender, customer_id, decision) -> dict:
    # A rep's own mail, proven by their reply token, is internal: what reaches
    # the customer is the reply maild relays (recorded as an outbound interaction).
    by_rep = sender is not None and sender.is_rep and decision.token_rep_id == sender.rep_id
    return dict(
        direction="internal" if by_rep else "inbound",
        channel="email",
        mailbox=mailbox,
        customer_id=customer_id,
        rep_id=sender.rep_id if sender else None,
        from_name=(sender.name if sender else "")[:200],
        from_email=sender.email[:320] if sender else None,
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
        raw_message_id=raw_id,
        created_at=utcnow(),
    )


def _finish(conn: Connection, raw_id: int, outcome: str) -> None:
    conn.execute(
        update(RawMessage.__table__).where(RawMessage.__table__.c.id == raw_id),
        {"state": "done", "outcome": outcome, "processed_at": utcnow(), "stage": None, "error": None},
    )


def _closed_long_ago(conn: Connection, issue_id: int, days: float | None) -> bool:
    """Per the mailbox's reopen_days: a reply this late opens a new, linked issue."""
    if days is None:
        return False
    closed_at = conn.scalar(select(Issue.__table__.c.closed_at).where(Issue.__table__.c.id == issue_id))
    return closed_at is not None and aware(closed_at) < utcnow() - timedelta(days=days)


def _reopen(conn: Connection, issue_id: int) -> None:
    table = Issue.__table__
    conn.execute(
        update(table).where(table.c.id == issue_id),
        {"status": "open", "closed_at": None, "updated_at": utcnow()},
    )


def store(
    session: Session,
    raw: RawMessage,
    msg: ParsedMessage,
    cls: Classification,
    sender: CustomerMatch | None,
    decision: ThreadDecision,
    rules: AddressRules,
    own_addresses: frozenset[str],
    reopen_days: float | None = None,
) -> Stored:
    raw_id, mailbox, source = raw.id, raw.mailbox, raw.source
    conn = session.connection()
    if cls.own_mail:
        _finish(conn, raw_id, "own-mail")
        return Stored(raw_id, "own-mail", mailbox, auto=cls.auto, source=source)
    if decision.issue_id is None and (cls.auto or cls.bounce):
        outcome = "unmatched-bounce" if cls.bounce else "unmatched-auto"
        _finish(conn, raw_id, outcome)
        return Stored(raw_id, outcome, mailbox, auto=cls.auto, source=source)
    if sender is None and decision.issue_id is None:
        raise NoSender("no From address, and nothing to thread it onto")
    customer_id = _customer(conn, sender, cls, rules)
    issue_id = decision.issue_id
    from_customer = sender is not None and not (sender.is_rep or sender.own_address)
    wakes = decision.issue_status == "closed" and from_customer and not cls.auto
    linked_to = issue_id if wakes and _closed_long_ago(conn, issue_id, reopen_days) else None
    new_issue = issue_id is None or linked_to is not None
    if new_issue:
        issue_id = _new_issue(conn, mailbox, msg, decision.category, customer_id, own_addresses)
    interaction_id = _insert(conn, Interaction, **_interaction(raw_id, mailbox, msg, cls, sender, customer_id, decision))
    for target in (issue_id, linked_to):  # a late reply also stays visible on the old issue
        if target is not None:
            conn.execute(insert(Action.__table__), {"issue_id": target, "interaction_id": interaction_id, "created_at": utcnow()})
    _attachments(conn, interaction_id, msg)
    # An issue's last activity is its newest action; only a reopen changes the row.
    reopened = wakes and linked_to is None
    if reopened:
        _reopen(conn, issue_id)
    _finish(conn, raw_id, "interaction")
    return Stored(
        raw_id, "interaction", mailbox, issue_id, interaction_id, new_issue, reopened,
        customer_id, sender.rep_id if sender else None, cls.auto, decision.reason, source,
        decision.token_rep_id, decision.token_purpose,
    )
