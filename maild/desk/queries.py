"""The read side of issues: lists and whole cases as the CLI shows them.

Each function returns plain JSON-ready dicts in the documented shape; fields
are only ever added, never renamed or removed.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from maild.customers import queries as customers
from maild.desk.picklists import picks_by_interaction
from maild.timefmt import iso as _iso
from maild.models import Action, Customer, Interaction, Issue, OutboxMessage, Rep


def _primary_email(customer: Customer | None) -> str | None:
    return customer.addresses[0].email if customer and customer.addresses else None


def issue_row(issue: Issue, count: int, last: datetime | None) -> dict:
    return {
        "id": issue.id,
        "status": issue.status,
        "category": issue.category.name,
        "priority": issue.priority,
        "subject": issue.subject,
        "mailbox": issue.mailbox,
        "customer": _primary_email(issue.customer),
        "customer_id": issue.customer_id,
        "assignee": issue.assignee.email if issue.assignee else None,
        "tags": list(issue.tags),
        "created": _iso(issue.opened_at),
        "updated": _iso(max(filter(None, [issue.updated_at, last]), default=None)),
        "closed": _iso(issue.closed_at),
        "interactions": count,
    }


def interaction_json(i: Interaction, rep_names: dict[int, str] | None = None) -> dict:
    return {
        "id": i.id,
        "direction": i.direction,
        "kind": i.channel,
        "from": i.from_email,
        "from_name": i.from_name,
        "to": list(i.to),
        "cc": list(i.cc),
        "subject": i.subject,
        "date": _iso(i.date),
        "message_id": i.message_id,
        "in_reply_to": i.in_reply_to,
        "new_text": i.new_text,
        "auto": i.auto,
        "bounce": i.bounce,
        "thread_reason": i.thread_reason,
        "rep": i.rep_id,
        "rep_name": (rep_names or {}).get(i.rep_id) if i.rep_id else None,
        "created": _iso(i.created_at),
        "attachments": [
            {"filename": a.filename, "content_type": a.content_type, "size": a.size, "sha256": a.sha256}
            for a in i.attachments
        ],
        "follow_up_required": [a.follow_up_required for a in i.actions if a.follow_up_required],
    }


def show_issue(session: Session, issue_id: int) -> dict | None:
    issue = session.get(Issue, issue_id)
    if issue is None:
        return None
    interactions = session.scalars(
        select(Interaction)
        .join(Action, Action.interaction_id == Interaction.id)
        .where(Action.issue_id == issue_id)
        .options(selectinload(Interaction.attachments), selectinload(Interaction.actions))
        .order_by(Interaction.id)
    ).all()
    last = max((i.created_at for i in interactions), default=None)
    out = issue_row(issue, len(interactions), last)
    out["cc"] = list(issue.cc)
    out["order_id"] = issue.order_id
    out["gift_certificate_id"] = issue.gift_certificate_id
    out["customer_record"] = customers.customer_json(issue.customer) if issue.customer else None
    rep_ids = {i.rep_id for i in interactions if i.rep_id}
    rep_names: dict[int, str] = {}
    if rep_ids:
        rep_names = {rid: name for rid, name in session.execute(select(Rep.id, Rep.name).where(Rep.id.in_(rep_ids)))}
    out["interactions"] = [interaction_json(i, rep_names) for i in interactions]
    out["merged_into"] = issue.merged_into_id
    picks = picks_by_interaction(session, issue_id)  # #type, #used, #log's channel
    for shown in out["interactions"]:
        shown["picks"] = picks.get(shown["id"], {})
    out["notices"] = notices(session, issue_id)
    return out


def notices(session: Session, issue_id: int) -> list[dict]:
    """Mail to reps about the issue (notifications, notices, files asked for): outbox rows, not interactions."""
    rows = session.execute(
        select(OutboxMessage.id, OutboxMessage.kind, OutboxMessage.recipients, OutboxMessage.subject,
               OutboxMessage.status, OutboxMessage.created_at)
        .where(OutboxMessage.issue_id == issue_id, OutboxMessage.to_customer.is_(False))
        .order_by(OutboxMessage.id)
    )
    return [{"id": r.id, "kind": r.kind, "to": list(r.recipients), "subject": r.subject or "", "status": r.status,
             "created": _iso(r.created_at)} for r in rows]
