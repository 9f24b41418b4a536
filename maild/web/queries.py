"""What the console's pages show, read from the database: plain dicts for the templates.

Read only, and bounded: every list has a limit and every text a length cap,
so no issue, customer or search costs unbounded time or memory to show.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, selectinload

from maild.customers.admin import live
from maild.customers.queries import customer_json, list_issues_for_customer, search_customers
from maild.desk.search import SearchError, search_issues
from maild.models import (
    Action, Attachment, Blob, Customer, CustomerAddress, Interaction, Issue, OutboxMessage, Rep,
)
from maild.timefmt import aware, iso

ATTENTION_LIMIT = 25  # issues per front-page list
INTERACTIONS_LIMIT = 300  # the latest interactions an issue page shows
TEXT_LIMIT = 100_000  # characters of one mail's text on a page
SEARCH_LIMIT = 100
MAX_ATTACHMENT = 100 * 1024 * 1024  # an attachment larger than this is not served from memory


def _issue_brief(issue: Issue) -> dict:
    customer = issue.customer
    return {
        "id": issue.id, "subject": issue.subject or "(no subject)", "status": issue.status,
        "priority": issue.priority, "category": issue.category.name, "mailbox": issue.mailbox,
        "assignee": issue.assignee.name if issue.assignee else None,
        "customer": (customer.name or (customer.addresses[0].email if customer.addresses else "")) if customer else "",
        "customer_id": issue.customer_id, "opened": iso(issue.opened_at), "updated": iso(issue.updated_at),
    }


def _briefs(session: Session, query) -> list[dict]:
    query = query.options(selectinload(Issue.category), selectinload(Issue.assignee),
                          selectinload(Issue.customer).selectinload(Customer.addresses))
    return [_issue_brief(i) for i in session.scalars(query)]


def attention(session: Session) -> dict[str, Any]:
    """Open issues to attract attention: nobody has taken them; the customer has waited longest."""
    unassigned = _briefs(session, select(Issue).where(Issue.status == "open", Issue.assignee_id.is_(None))
                         .order_by(Issue.opened_at, Issue.id).limit(ATTENTION_LIMIT))
    last = (select(Action.issue_id, func.max(Action.interaction_id).label("last_id"))
            .join(Issue, Issue.id == Action.issue_id).where(Issue.status == "open")
            .group_by(Action.issue_id).subquery())
    waiting_q = (select(Issue, Interaction.created_at).join(last, last.c.issue_id == Issue.id)
                 .join(Interaction, Interaction.id == last.c.last_id)
                 .where(Interaction.direction == "inbound")
                 .order_by(Interaction.created_at, Issue.id).limit(ATTENTION_LIMIT)
                 .options(selectinload(Issue.category), selectinload(Issue.assignee),
                          selectinload(Issue.customer).selectinload(Customer.addresses)))
    waiting = []
    for issue, since in session.execute(waiting_q):
        row = _issue_brief(issue)
        row["waiting_since"] = iso(aware(since))
        waiting.append(row)
    counts = dict(session.execute(select(Issue.status, func.count(Issue.id)).group_by(Issue.status)).all())
    return {"unassigned": unassigned, "waiting": waiting, "counts": counts}


def issues_by_id(session: Session, ids: list[int]) -> list[dict]:
    """Issues in the order of `ids` (from another query, e.g. the breaching ones)."""
    if not ids:
        return []
    found = {i["id"]: i for i in _briefs(session, select(Issue).where(Issue.id.in_(ids)))}
    return [found[i] for i in ids if i in found]


def _cap(text: str | None) -> tuple[str, bool]:
    text = text or ""
    return (text[:TEXT_LIMIT], True) if len(text) > TEXT_LIMIT else (text, False)


def _interaction(i: Interaction, rep_names: dict[int, str]) -> dict:
    new_text, new_cut = _cap(i.new_text)
    full_text, full_cut = _cap(i.full_text)
    return {
        "id": i.id, "direction": i.direction, "channel": i.channel, "from_name": i.from_name,
        "from_email": i.from_email, "rep": rep_names.get(i.rep_id) if i.rep_id else None,
        "to": list(i.to or ()), "cc": list(i.cc or ()), "subject": i.subject, "date": iso(i.date),
        "created": iso(i.created_at), "new_text": new_text, "new_cut": new_cut, "full_text": full_text,
        "full_cut": full_cut, "auto": i.auto, "bounce": i.bounce,
        "attachments": [{"id": a.id, "filename": a.filename or "attachment", "content_type": a.content_type,
                         "size": a.size} for a in i.attachments],
        "follow_ups": [a.follow_up_required for a in i.actions if a.follow_up_required],
    }


def issue_page(session: Session, issue_id: int) -> dict | None:
    """An issue's header, its interactions in order (the latest INTERACTIONS_LIMIT) and the mail sent about it."""
    issue = session.get(Issue, issue_id)
    if issue is None:
        return None
    total = session.scalar(select(func.count(Action.id)).where(Action.issue_id == issue_id)) or 0
    latest = (select(Interaction).join(Action, Action.interaction_id == Interaction.id)
              .where(Action.issue_id == issue_id).order_by(Interaction.id.desc()).limit(INTERACTIONS_LIMIT)
              .options(selectinload(Interaction.attachments), selectinload(Interaction.actions)))
    interactions = sorted(session.scalars(latest), key=lambda i: i.id)
    rep_ids = {i.rep_id for i in interactions if i.rep_id}
    rep_names = dict(session.execute(select(Rep.id, Rep.name).where(Rep.id.in_(rep_ids))).all()) if rep_ids else {}
    outbox = session.execute(
        select(OutboxMessage.id, OutboxMessage.kind, OutboxMessage.recipients, OutboxMessage.status,
               OutboxMessage.created_at, OutboxMessage.sent_at, OutboxMessage.last_error)
        .where(OutboxMessage.issue_id == issue_id).order_by(OutboxMessage.id.desc()).limit(100)
    ).all()
    out = _issue_brief(issue)
    customer = issue.customer
    out.update({
        "closed": iso(issue.closed_at), "tags": list(issue.tags or ()), "cc": list(issue.cc or ()),
        "order_id": issue.order_id, "gift_certificate_id": issue.gift_certificate_id,
        "customer_emails": [a.email for a in customer.addresses] if customer else [],
        "interactions": [_interaction(i, rep_names) for i in interactions],
        "total_interactions": total,
        "outbox": [{"id": r.id, "kind": r.kind, "to": ", ".join(r.recipients or ()), "status": r.status,
                    "created": iso(r.created_at), "sent": iso(r.sent_at), "error": r.last_error}
                   for r in reversed(outbox)],
    })
    return out


def attachment(session: Session, issue_id: int, attachment_id: int) -> tuple[str, str, bytes] | None:
    """(filename, content type, bytes) of an attachment of a mail on this issue; None otherwise."""
    row = session.execute(
        select(Attachment.filename, Attachment.content_type, Attachment.size, Attachment.sha256)
        .join(Action, and_(Action.interaction_id == Attachment.interaction_id, Action.issue_id == issue_id))
        .where(Attachment.id == attachment_id)
    ).first()
    if row is None or row.size > MAX_ATTACHMENT:
        return None
    data = session.scalar(select(Blob.data).where(Blob.sha256 == row.sha256))
    return (row.filename or "attachment", row.content_type or "application/octet-stream", data or b"")


def customer_page(session: Session, customer_id: int) -> dict | None:
    """The identification record (a merged one shown as the record it went into), addresses and issues."""
    asked = session.get(Customer, customer_id)
    if asked is None:
        return None
    customer = live(session, asked)
    out = customer_json(customer)
    out["merged_from"] = customer_id if customer.id != customer_id else None
    out["issues"] = list_issues_for_customer(session, customer.id)[-1000:]
    return out


def search(session: Session, text: str) -> dict:
    """Issues by the full-text index of their mail (desk.search: best first, with a snippet), then issues
    whose subject, or whose customer's name or address, contains the text; and matching customers."""
    text = text.strip()[:200]
    if not text:
        return {"issues": [], "customers": []}
    try:
        hits = search_issues(session, text, limit=SEARCH_LIMIT)
    except SearchError:  # no word to look for (only punctuation): the plain match below still runs
        hits = []
    like = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    customers_matching = (select(CustomerAddress.customer_id).where(func.lower(CustomerAddress.email).like(like, escape="\\"))
                          .union(select(Customer.id).where(func.lower(Customer.name).like(like, escape="\\"))))
    plain = session.scalars(select(Issue.id).where(or_(func.lower(Issue.subject).like(like, escape="\\"),
                                                       Issue.customer_id.in_(customers_matching)))
                            .order_by(Issue.id.desc()).limit(SEARCH_LIMIT))
    snippets = {h["id"]: h.get("snippet") or "" for h in hits}
    ids = list(dict.fromkeys([*snippets, *plain]))[:SEARCH_LIMIT]
    issues = issues_by_id(session, ids)
    for issue in issues:
        issue["snippet"] = snippets.get(issue["id"], "")
    return {"issues": issues, "customers": search_customers(session, text, limit=SEARCH_LIMIT)}
