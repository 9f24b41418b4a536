"""The one durable outbox: everything maild sends is queued here first.

Queueing fixes the Message-ID and every byte of the mail in the caller's
transaction, so nothing is sent that is not recorded. Mail to the customer is
also recorded as an outbound interaction on its issue (with the files it
carries), so a reply threads back even before the mail has left. Notices to
reps (notifications, rep notices, delivery notices) are correspondence with
nobody: they stay outbox rows linked to the issue, and each one refers to the
issue's thread root (compose.thread_root) so a rep's mail client groups them.
Delivery is the sender's job (sender.py); this module never talks SMTP.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import Insert as Insert_, bindparam, event, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from maild.addresses import AddressRules
from maild.config import Settings
from maild.timefmt import aware
from maild.statements import Insert, inserted, param
from maild.models import Action, Attachment, CustomerAddress, Interaction, Issue, OutboxMessage, table_of, utcnow
from maild.outbound.compose import OutAttachment, Outgoing, compose, new_message_id, thread_root

# Every status an outbox row can have: queued until a sender leases it, sending
# while leased, then sent, failed, held (spell check) or unknown (delivery
# ambiguous twice, never sent a third time).
# A campaign's rows not yet sent when it is cancelled become cancelled.
OUTBOX_STATUSES = ("queued", "sending", "sent", "held", "failed", "unknown", "cancelled")


@dataclass(frozen=True)
class OutboxPolicy:
    """What queueing needs from the config."""

    message_id_domain: str
    deadline: timedelta
    max_auto_per_recipient: int
    rules: AddressRules
    mailboxes: dict[str, tuple[str, str]]  # name -> (address, display name)

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxPolicy:
        return cls(
            settings.message_id_domain,
            timedelta(hours=settings.outbound.deadline_hours),
            settings.outbound.max_auto_per_recipient,
            AddressRules(settings.ingest.fold_plus_addresses, settings.ingest.case_sensitive_local_part),
            {m.name: (m.address, m.display_name or "") for m in settings.mailbox},
        )


_ISSUE_CUSTOMER = select(Issue.customer_id).where(Issue.id == bindparam("issue_id"))
# An address's failing mark and its day's automatic mail (plain tables: no ORM set-up per
# query), for one read of their own or as two more columns of another read.
_addresses, _outbox = table_of(CustomerAddress), table_of(OutboxMessage)
STANDING_COLUMNS = (
    select(_addresses.c.failing_until).where(_addresses.c.key == bindparam("key")).scalar_subquery(),
    select(func.count(_outbox.c.id)).where(
        _outbox.c.recipient_key == bindparam("key"),
        _outbox.c.auto.is_(True),
        _outbox.c.to_customer.is_(True),
        _outbox.c.created_at > bindparam("since"),
    ).scalar_subquery(),
)
_AUTO_STANDING = select(*STANDING_COLUMNS)


def _interaction_fields(session: Session, out: Outgoing, message_id: str | None, from_addr: str, from_name: str,
                        channel: str, now: datetime) -> dict:
    customer_id = out.customer_id
    if customer_id is None and out.to_customer and out.issue_id:
        customer_id = session.scalar(_ISSUE_CUSTOMER, {"issue_id": out.issue_id})
    return dict(
        direction="outbound" if out.to_customer else "internal",
        channel=channel,
        mailbox=out.mailbox,
        customer_id=customer_id,
        rep_id=out.rep_id,
        from_name=from_name,
        from_email=from_addr,
        to=list(out.to),
        cc=list(out.cc),
        subject=out.subject,
        date=now,
        message_id=message_id,
        in_reply_to=out.in_reply_to,
        references=list(out.references[-50:]),
        full_text=out.body,
        new_text=out.body,
        auto=out.kind if out.auto else None,
        auto_generated=out.auto,
        thread_reason="outbound",
    )


def _attachment_fields(a: OutAttachment) -> dict:
    return dict(sha256=a.sha256, filename=a.filename[:255], content_type=a.content_type[:255],
                content_id=a.content_id, inline=a.inline, size=len(a.data))


def _interaction(
    session: Session, out: Outgoing, message_id: str | None, from_addr: str, from_name: str, channel: str = "email",
    flush: bool = True,
) -> Interaction:
    interaction = Interaction(**_interaction_fields(session, out, message_id, from_addr, from_name, channel, utcnow()))
    session.add(interaction)
    if out.issue_id:
        session.add(Action(issue_id=out.issue_id, interaction=interaction))
    for a in out.attachments:  # the blobs are stored already: the files came in with a stored mail
        interaction.attachments.append(Attachment(**_attachment_fields(a)))
    if flush:
        session.flush()
    return interaction


def _threaded_notice(out: Outgoing, domain: str) -> Outgoing:
    """A notice to reps about an issue: under the issue's thread root, after what it answers."""
    if out.to_customer or out.issue_id is None:
        return out
    root = thread_root(out.issue_id, domain)
    refs = [root, *(r for r in out.references if r != root)]
    if out.in_reply_to and out.in_reply_to not in refs:
        refs.append(out.in_reply_to)
    return replace(out, in_reply_to=out.in_reply_to or root, references=tuple(refs))


class _Prepared(NamedTuple):
    out: Outgoing  # threaded
    message_id: str
    from_addr: str
    display: str
    row: dict  # the outbox row's columns but its interaction


def _prepare(out: Outgoing, policy: OutboxPolicy, now: datetime, status: str, not_before: datetime | None) -> _Prepared:
    """Message-ID, bytes and the outbox row of one mail."""
    due = max(now, not_before or now)  # a throttled campaign's row: Date, first attempt and deadline from then
    from_addr, display = policy.mailboxes[out.mailbox]
    message_id = new_message_id(policy.message_id_domain)
    out = _threaded_notice(out, policy.message_id_domain)
    data = compose(out, from_addr, display, message_id, due, policy.message_id_domain)
    row = dict(
        kind=out.kind, mailbox=out.mailbox, issue_id=out.issue_id, subject=out.subject,
        rep_id=out.rep_id, envelope_from=from_addr, recipients=[*out.to, *out.cc],
        recipient_key=policy.rules.key(out.to[0]), message_id=message_id, data=data, auto=out.auto,
        to_customer=out.to_customer, status=status, attempts=0, next_attempt_at=due,
        deadline_at=due + policy.deadline, created_at=now,
    )
    return _Prepared(out, message_id, from_addr, display, row)


def enqueue(
    session: Session, out: Outgoing, policy: OutboxPolicy, now: datetime | None = None, status: str = "queued",
    not_before: datetime | None = None,
) -> OutboxMessage:
    """Queue one mail (or hold it: status "held"); mail to the customer is recorded on its issue too.

    The caller commits; the rows are flushed here, so the row has its id.
    """
    p = _prepare(out, policy, now or utcnow(), status, not_before)
    interaction = (_interaction(session, p.out, p.message_id, p.from_addr, p.display, flush=False)
                   if p.out.to_customer else None)
    row = OutboxMessage(**p.row, interaction=interaction)
    session.add(row)
    session.flush()
    session.info["outbox_queued"] = True  # see wake_on_queued
    return row


_NEW_INTERACTION = Insert(table_of(Interaction))
_NEW_ACTION = Insert(table_of(Action))
_NEW_ATTACHMENT = Insert(table_of(Attachment))
_NEW_OUTBOX = Insert(table_of(OutboxMessage))


def queue_written(session: Session, out: Outgoing, policy: OutboxPolicy, now: datetime | None = None) -> Queued:
    """Queue one automatic mail as enqueue does, written at once as plain SQL (no unit of work).

    For the notifier's acknowledgements and notifications, a few per customer
    mail under a burst: the rows are in the transaction when this returns, in
    the order mail was queued, and auto_allowed counts them. Not for a rep's
    reply (the first-response hook watches those go through the ORM) nor for
    anything the caller changes afterwards through the ORM.
    """
    now = now or utcnow()
    p = _prepare(out, policy, now, "queued", None)
    conn = session.connection()
    interaction_id = None
    row = {**p.row, "resends": 0}
    if p.out.to_customer:
        fields = _interaction_fields(session, p.out, p.message_id, p.from_addr, p.display, "email", now)
        recorded = {**fields, "html": None, "bounce": None, "mailing_list": None, "defects": [],
                    "raw_message_id": None, "created_at": now}
        if p.out.issue_id and not p.out.attachments and conn.dialect.name == "postgresql":
            outbox_id, interaction_id = conn.execute(_recorded_statement(tuple(recorded), tuple(row)), {
                **{f"i_{k}": v for k, v in recorded.items()}, **{f"o_{k}": v for k, v in row.items()},
                "a_issue_id": p.out.issue_id, "a_created_at": now,
            }).one()
            session.info["outbox_queued"] = True  # see wake_on_queued
            return Queued(outbox_id, p.message_id, interaction_id)
        interaction_id = _NEW_INTERACTION.one(conn, recorded)
        if p.out.issue_id:
            _NEW_ACTION.one(conn, {"issue_id": p.out.issue_id, "interaction_id": interaction_id, "created_at": now})
        _NEW_ATTACHMENT.many(conn, [{**_attachment_fields(a), "interaction_id": interaction_id}
                                    for a in p.out.attachments])
    outbox_id = _NEW_OUTBOX.one(conn, {**row, "interaction_id": interaction_id})
    session.info["outbox_queued"] = True  # see wake_on_queued
    return Queued(outbox_id, p.message_id, interaction_id)


@functools.lru_cache(maxsize=8)
def _recorded_statement(interaction_keys: tuple[str, ...], outbox_keys: tuple[str, ...]) -> Insert_:
    """PostgreSQL: mail to the customer, its interaction and the issue's action in one statement
    (a round trip each costs more than building the rows, under a burst). Built once per column set."""
    i_t, a_t, o_t = table_of(Interaction), table_of(Action), table_of(OutboxMessage)
    new_i = inserted(i_t, interaction_keys, "i_", "new_interaction")
    new_a = insert(a_t).from_select(
        ["issue_id", "interaction_id", "created_at"],
        select(param(a_t, "issue_id", "a_"), new_i.c.id, param(a_t, "created_at", "a_")),
    ).cte("new_action")
    return (
        insert(o_t).from_select(
            [*outbox_keys, "interaction_id"],
            select(*[param(o_t, k, "o_") for k in outbox_keys], new_i.c.id),
        ).returning(o_t.c.id, o_t.c.interaction_id).add_cte(new_i).add_cte(new_a)
    )


class Queued(NamedTuple):
    """A mail queued by queue_written: its outbox row, Message-ID and recorded interaction."""

    id: int
    message_id: str
    interaction_id: int | None


def wake_on_queued(sessions: sessionmaker[Session], wake: Callable[[], None]) -> None:
    """Call `wake` after each commit of a session (from `sessions`) that queued mail, so it leaves at once."""

    def committed(session: Session) -> None:
        if session.info.pop("outbox_queued", False):
            wake()

    def rolled_back(session: Session) -> None:
        session.info.pop("outbox_queued", None)

    event.listen(sessions, "after_commit", committed)
    event.listen(sessions, "after_rollback", rolled_back)


def record_note(session: Session, note: Outgoing, policy: OutboxPolicy) -> Interaction:
    """An internal note on the issue: recorded, never sent."""
    from_addr, display = policy.mailboxes[note.mailbox]
    return _interaction(session, note, None, from_addr, display, channel="note")


def standing_params(policy: OutboxPolicy, address: str, now: datetime) -> dict:
    """The parameters of STANDING_COLUMNS for mail to `address` at `now`."""
    return {"key": policy.rules.key(address), "since": now - timedelta(hours=24)}


def allowed_by(policy: OutboxPolicy, failing: datetime | None, sent: int | None, now: datetime) -> bool:
    """The rule, from what STANDING_COLUMNS read: not failing, and under the day's automatic mail."""
    if failing is not None and aware(failing) > now:
        return False
    return (sent or 0) < policy.max_auto_per_recipient


def auto_allowed(session: Session, policy: OutboxPolicy, address: str, now: datetime | None = None) -> bool:
    """False when the address bounced recently or had its day's automatic mail already."""
    now = now or utcnow()
    if session.autoflush:  # a plain-table read: rows queued through the ORM count, as autoflush had them
        session.flush()
    failing, sent = session.execute(_AUTO_STANDING, standing_params(policy, address, now)).one()
    return allowed_by(policy, failing, sent, now)
