"""An issue as a rep reads it by mail: its summary, its whole history, the queue.

Reps without a shell see issues only through mail, so the desk answers
`#history N` and `#queue` with these texts, and an assignment notice carries
the summary. Read-only: it queries and formats, never writes or sends.
Every text is bounded (lines, characters per interaction, rows in a queue),
whatever the issue holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, selectinload

from maild.config import Settings
from maild.models import Action, Category, Customer, Interaction, Issue, Rep
from maild.timefmt import aware
from maild.tokens import TokenSigner

QUEUE_ROWS = 100  # issues listed in one #queue answer; the rest are counted
HISTORY_ROWS = 500  # interactions in one #history answer (the newest are kept)
TEXT_CHARS = 20_000  # of one interaction's text in a history
DIGEST_ROWS = 5  # earlier interactions in a summary
DIGEST_CHARS = 300
QUEUE_FILTERS = ("open", "unassigned", "mine", "pending", "closed")
_PRIORITY_RANK = {"urgent": 0, "high": 1, "normal": 2, "low": 3}


def desk_address(settings: Settings, signer: TokenSigner | None, rep_id: int) -> str | None:
    """A rep's own desk address, under the first mailbox (any mailbox's address takes the same token)."""
    return signer.desk_address(settings.mailbox[0].address, rep_id) if signer else None


def age(since: datetime, now: datetime) -> str:
    seconds = max(0, int((now - aware(since)).total_seconds()))
    if seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m"


def customer_label(customer: Customer | None) -> str:
    if customer is None:
        return "(no customer)"
    email = customer.addresses[0].email if customer.addresses else ""
    if customer.name and email:
        return f"{customer.name} <{email}>"
    return customer.name or email or f"customer {customer.id}"


def interactions(session: Session, issue_id: int, limit: int = HISTORY_ROWS) -> list[Interaction]:
    """The issue's interactions in the order they were recorded (the newest `limit`)."""
    rows = session.scalars(
        select(Interaction).join(Action, Action.interaction_id == Interaction.id)
        .where(Action.issue_id == issue_id).order_by(Interaction.id.desc()).limit(limit)
        .options(selectinload(Interaction.attachments))
    ).all()
    return list(reversed(rows))


def _who(i: Interaction) -> str:
    name = i.from_name or ""
    return f"{name} <{i.from_email}>" if name and i.from_email else (name or i.from_email or "maild")


def _kind(i: Interaction) -> str:
    if i.channel not in ("email", None):
        return i.channel
    return {"inbound": "mail in", "outbound": "mail out", "internal": "internal"}.get(i.direction, i.direction)


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + " [...]"


def header(issue: Issue) -> str:
    assignee = f"{issue.assignee.name} <{issue.assignee.email}>" if issue.assignee else "nobody"
    return (f"Issue #{issue.id}: {issue.subject}\n"
            f"Status: {issue.status}   Priority: {issue.priority}   Category: {issue.category.name}\n"
            f"Assignee: {assignee}\n"
            f"Customer: {customer_label(issue.customer)}\n"
            f"Opened: {aware(issue.opened_at):%Y-%m-%d %H:%M} UTC   Mailbox: {issue.mailbox}")


def summary(session: Session, issue: Issue) -> str:
    """The header and a digest of the last few interactions, newest last."""
    rows = interactions(session, issue.id, DIGEST_ROWS)
    lines = [header(issue), ""]
    for i in rows:
        when = aware(i.created_at)
        lines.append(f"- {when:%Y-%m-%d %H:%M} {_kind(i)}, {_who(i)}:")
        lines += [f"    {line}" for line in _clip(i.new_text, DIGEST_CHARS).splitlines()[:8]]
    return "\n".join(lines)


def history(session: Session, issue: Issue) -> tuple[str, list[Interaction]]:
    """The whole history as text (every interaction in order), and the interactions."""
    rows = interactions(session, issue.id)
    lines = [header(issue), ""]
    for n, i in enumerate(rows, 1):
        when = aware(i.date or i.created_at)
        lines.append(f"--- {n}. {when:%Y-%m-%d %H:%M} UTC, {_kind(i)}, {_who(i)}")
        if i.subject:
            lines.append(f"Subject: {i.subject}")
        for a in i.attachments:
            lines.append(f"Attachment: {a.filename} ({a.content_type}, {a.size} bytes)")
        lines += ["", _clip(i.new_text, TEXT_CHARS), ""]
    return "\n".join(lines), rows


def history_footer(unattached: str, note: str | None) -> str:
    """What follows the `#history` answer's history: the files left out (`unattached`, listed,
    each to be asked for by name) and how to answer the customer or add a note (at `note`)."""
    left_out = (f"\n\nNot attached (over the size limit); answer \"#attachments NAME\" to get one:\n{unattached}"
                if unattached else "")
    how = "\n\n-- \nReply to this message to answer the customer on this issue."
    return left_out + how + (f"\nWrite to {note} to add an internal note instead." if note else "")


@dataclass(frozen=True)
class QueueRow:
    issue: Issue
    age: str


def queue(session: Session, rep: Rep, which: str, now: datetime) -> tuple[list[QueueRow], int] | str:
    """Issues for `#queue WHICH`, most urgent and oldest first, and how many more there are;
    or why WHICH is not a filter."""
    q = select(Issue)
    if which in ("open", "unassigned"):
        q = q.where(Issue.status == "open")
    if which == "unassigned":
        q = q.where(Issue.assignee_id.is_(None))
    elif which == "mine":
        q = q.where(Issue.assignee_id == rep.id, Issue.status != "closed")
    elif which in ("pending", "closed"):
        q = q.where(Issue.status == which)
    elif which != "open":
        category = session.scalar(select(Category).where(func.lower(Category.name) == which))
        if category is None:
            names = ", ".join(session.scalars(select(Category.name).order_by(Category.name)))
            return (f"#queue: expected {', '.join(QUEUE_FILTERS)} or a category ({names}), got {which!r}")
        q = q.where(Issue.category_id == category.id, Issue.status == "open")
    q = q.where(Issue.merged_into_id.is_(None))  # a merged issue is a pointer, not work
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rank = case(_PRIORITY_RANK, value=Issue.priority, else_=2)
    rows = session.scalars(
        q.order_by(rank, Issue.opened_at, Issue.id).limit(QUEUE_ROWS)
        .options(selectinload(Issue.category), selectinload(Issue.assignee),
                 selectinload(Issue.customer).selectinload(Customer.addresses))
    ).all()
    return [QueueRow(i, age(i.opened_at, now)) for i in rows], total - len(rows)


def queue_text(rows: list[QueueRow], more: int, rep_id: int, see: str,
               reply_address: Callable[[Issue], str | None]) -> str:
    """The `#queue` answer: a line per issue, then how to take it (a mailto: of its reply
    address, when it has one) and see its history (a mailto: of the desk address `see`)."""
    lines = []
    for row in rows:
        i = row.issue
        who = i.assignee.name if i.assignee else "unassigned"
        lines.append(f"#{i.id}  {row.age}  {i.status}  {i.priority}  {who}  {customer_label(i.customer)}  {i.subject}")
        take = "#take" if i.assignee_id in (None, rep_id) else "#take!"
        reply = reply_address(i)
        if reply:
            lines.append(f"    take: {mailto(reply, take)}")
        lines.append(f"    see: {mailto(see, f'#history {i.id}')}" if see else
                     f"    see: #history {i.id} to your desk address")
    if more:
        lines.append(f"\n... and {more} more.")
    text = "\n".join(lines) if lines else "No issues."
    return f"{text}\n\nEach line: id, age, status, priority, assignee, customer, subject."


def mailto(address: str, body: str) -> str:
    return f"mailto:{address}?body={quote(body)}"
