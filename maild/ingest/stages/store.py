"""The store stage: the only stage that writes.

Issue, interaction, action, attachments and the customer record go into the
caller's transaction together, so a message is recorded whole or not at all.
Automatic mail that threads nowhere, and our own mail coming back, are
recorded on the raw message only: they never open an issue. Plain SQL
statements rather than the ORM's unit of work: this runs once per message on
the ingest hot path.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from maild.addresses import AddressRules
from maild.models import Action, Attachment, Blob, Customer, CustomerAddress, Interaction, Issue, RawMessage, table_of, utcnow
from maild.timefmt import aware
from maild.ingest.stages import combined
from maild.ingest.stages.lookup import DbLookup
from maild.statements import Insert
from maild.ingest.stages.records import Stored, Classification, CustomerMatch, ParsedMessage, ThreadDecision

# Built once: statements are the hot path's main cost, and a prebuilt one
# skips construction and reuses its compiled form.
_issues, _customers, _addresses = table_of(Issue), table_of(Customer), table_of(CustomerAddress)
_raw = table_of(RawMessage)
_NEW_CUSTOMER = Insert(_customers)
_NEW_ISSUE = Insert(_issues)
_NEW_INTERACTION = Insert(table_of(Interaction))
_NEW_ACTION = Insert(table_of(Action))
_NEW_ATTACHMENT = Insert(table_of(Attachment))
_DROP_CUSTOMER = _customers.delete().where(_customers.c.id == bindparam("id"))
_ADDRESS_OWNER = select(_addresses.c.customer_id).where(_addresses.c.key == bindparam("key"))
_CLOSED_AT = select(_issues.c.closed_at).where(_issues.c.id == bindparam("id"))
_REOPEN = update(_issues).where(_issues.c.id == bindparam("issue_id"))
_DONE = update(_raw).where(_raw.c.id.in_(bindparam("raw_ids", expanding=True)))
_CHUNK = 400  # raw ids per IN list, under every backend's parameter limit


def _unless_there(dialect: str, table, key):
    """Insert unless the key is taken (ON CONFLICT is per backend)."""
    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert_(table).on_conflict_do_nothing(index_elements=[key])


_DIALECTS = ("postgresql", "sqlite")
_CLAIM_ADDRESS = {d: _unless_there(d, _addresses, _addresses.c.key).returning(_addresses.c.id) for d in _DIALECTS}
_NEW_BLOB = {d: _unless_there(d, table_of(Blob), table_of(Blob).c.sha256) for d in _DIALECTS}


class NoSender(Exception):
    """A message with no usable From address that threads onto no issue."""


def _customer(conn: Connection, sender: CustomerMatch | None, cls: Classification, rules: AddressRules,
              lookup: DbLookup) -> int | None:
    """The sender's record: existing, new (for human mail from a customer), or none.

    When another transaction recorded the same new sender after identify
    looked (one mail delivered to two mailboxes at once), its record is the
    sender's: the address is claimed with ON CONFLICT, never a key violation.
    """
    if sender is None or sender.own_address or sender.is_rep:
        return None
    if sender.customer_id is not None or cls.auto:
        return sender.customer_id  # automatic mail never creates an identification record
    now, key = utcnow(), rules.key(sender.email)[:320]
    name, email = (sender.name or "")[:200], sender.email[:320]
    if conn.dialect.name == "postgresql":
        customer_id, claimed = conn.execute(
            combined.new_customer(), {"name": name, "tags": [], "email": email, "key": key, "created_at": now},
        ).one()
    else:
        customer_id = _NEW_CUSTOMER.one(conn, {"name": name, "tags": [], "created_at": now})
        claimed = conn.execute(
            _CLAIM_ADDRESS[conn.dialect.name], {"customer_id": customer_id, "email": email, "key": key, "created_at": now},
        ).scalar()
    if claimed is None:
        conn.execute(_DROP_CUSTOMER, {"id": customer_id})
        owner = conn.scalar(_ADDRESS_OWNER, {"key": key})
        if owner is None:  # claimed by a transaction that has since rolled back: let the retry decide
            raise RuntimeError(f"address {key!r} was claimed and released while storing")
        customer_id = owner
    lookup.remember_customer(key, customer_id)
    return customer_id


def _issue(mailbox: str, msg: ParsedMessage, category: str, customer_id, own, lookup: DbLookup) -> dict:
    ids = lookup.category_ids()
    now = utcnow()
    return dict(
        mailbox=mailbox, subject=msg.subject, category_id=ids.get(category) or ids["uncategorized"],
        customer_id=customer_id, cc=[a.email for a in msg.cc if a.email.lower() not in own], tags=[],
        status="open", priority="normal", opened_at=now, updated_at=now,
    )


def _record(conn: Connection, issue: dict | None, issue_id: int | None, linked_to: int | None,
            row: dict) -> tuple[int, int]:
    """The new issue (when `issue` is given), the interaction and its actions; (issue id, interaction id).
    PostgreSQL writes them in one statement when there is one action (combined.py)."""
    now = utcnow()
    if conn.dialect.name == "postgresql" and linked_to is None:
        params = {**{f"i_{k}": v for k, v in row.items()}, "a_created_at": now}
        if issue is not None:
            params.update({f"s_{k}": v for k, v in issue.items()})
        else:
            params["a_issue_id"] = issue_id
        statement = combined.recorded(tuple(row), tuple(issue) if issue is not None else None)
        new_issue_id, interaction_id = conn.execute(statement, params).one()
        return new_issue_id, interaction_id
    if issue is not None:
        issue_id = _NEW_ISSUE.one(conn, issue)
    assert issue_id is not None
    interaction_id = _NEW_INTERACTION.one(conn, row)
    targets = [t for t in (issue_id, linked_to) if t is not None]  # a late reply also stays on the old issue
    _NEW_ACTION.many(conn, [{"issue_id": t, "interaction_id": interaction_id, "created_at": now} for t in targets])
    return issue_id, interaction_id


def _attachments(conn: Connection, interaction_id: int, msg: ParsedMessage) -> None:
    if not msg.attachments:
        return
    blobs = {a.sha256: {"sha256": a.sha256, "size": a.size, "data": a.data} for a in msg.attachments}
    conn.execute(_NEW_BLOB[conn.dialect.name], list(blobs.values()))  # content already stored stays as it is
    _NEW_ATTACHMENT.many(conn, [{
        "interaction_id": interaction_id, "sha256": a.sha256, "filename": a.filename,
        "content_type": a.content_type[:255], "content_id": (a.content_id or "")[:255] or None,
        "inline": a.inline, "size": a.size,
    } for a in msg.attachments])


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


def mark_done(conn: Connection, outcomes: list[tuple[int, str]]) -> None:
    """Mark stored messages done: a statement per outcome (a batch has few) rather than per message."""
    now = utcnow()
    by_outcome: dict[str, list[int]] = {}
    for raw_id, outcome in outcomes:
        by_outcome.setdefault(outcome, []).append(raw_id)
    for outcome, raw_ids in by_outcome.items():
        for i in range(0, len(raw_ids), _CHUNK):
            conn.execute(_DONE, {"raw_ids": raw_ids[i : i + _CHUNK], "state": "done", "outcome": outcome,
                                 "processed_at": now, "stage": None, "error": None})


def _closed_long_ago(conn: Connection, issue_id: int, days: float | None) -> bool:
    """Per the mailbox's reopen_days: a reply this late opens a new, linked issue."""
    if days is None:
        return False
    closed_at = conn.scalar(_CLOSED_AT, {"id": issue_id})
    return closed_at is not None and aware(closed_at) < utcnow() - timedelta(days=days)


def _reopen(conn: Connection, issue_id: int, lookup: DbLookup) -> None:
    conn.execute(_REOPEN, {"issue_id": issue_id, "status": "open", "closed_at": None, "updated_at": utcnow()})
    lookup.remember_issue(issue_id, "open")


def store(
    lookup: DbLookup,
    raw: Row,
    msg: ParsedMessage,
    cls: Classification,
    sender: CustomerMatch | None,
    decision: ThreadDecision,
    rules: AddressRules,
    own_addresses: frozenset[str],
    reopen_days: float | None = None,
) -> Stored:
    """Write the message's records; the caller marks the raw message done (`mark_done`)."""
    raw_id, mailbox, source = raw.id, raw.mailbox, raw.source
    conn = lookup.conn
    if cls.own_mail:
        return Stored(raw_id, "own-mail", mailbox, auto=cls.auto, source=source)
    if decision.issue_id is None and (cls.auto or cls.bounce):
        outcome = "unmatched-bounce" if cls.bounce else "unmatched-auto"
        return Stored(raw_id, outcome, mailbox, auto=cls.auto, source=source)
    if sender is None and decision.issue_id is None:
        raise NoSender("no From address, and nothing to thread it onto")
    customer_id = _customer(conn, sender, cls, rules, lookup)
    issue_id = decision.issue_id
    from_customer = sender is not None and not (sender.is_rep or sender.own_address)
    wakes = decision.issue_status == "closed" and from_customer and not cls.auto
    linked_to = issue_id if wakes and issue_id is not None and _closed_long_ago(conn, issue_id, reopen_days) else None
    new_issue = issue_id is None or linked_to is not None
    issue = _issue(mailbox, msg, decision.category, customer_id, own_addresses, lookup) if new_issue else None
    row = _interaction(raw_id, mailbox, msg, cls, sender, customer_id, decision)
    issue_id, interaction_id = _record(conn, issue, issue_id, linked_to, row)
    if new_issue:
        lookup.remember_issue(issue_id, "open")
    lookup.remember_message(msg.message_id, [t for t in (issue_id, linked_to) if t is not None])
    _attachments(conn, interaction_id, msg)
    # An issue's last activity is its newest action; only a reopen changes the row.
    reopened = wakes and linked_to is None
    if reopened and issue_id is not None:
        _reopen(conn, issue_id, lookup)
    return Stored(
        raw_id, "interaction", mailbox, issue_id, interaction_id, new_issue, reopened,
        customer_id, sender.rep_id if sender else None, cls.auto, decision.reason, source,
        decision.token_rep_id, decision.token_purpose, record=row, has_files=bool(msg.attachments),
    )
