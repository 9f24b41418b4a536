""""Mail me this issue": the issue's history to the rep who asked, with fresh reply and note addresses.

The desk has no `#history` by mail to call yet, so this small function writes
the mail itself and queues it through the outbox like every other mail; the
rep answers from their mail client, and the reply and note addresses carry
tokens issued to that rep. It only queues: delivery is the sender's.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from maild.models import Action, Interaction, Issue
from maild.outbound.compose import Outgoing
from maild.outbound.outbox import OutboxPolicy, enqueue
from maild.subjects import subject_tag
from maild.timefmt import iso
from maild.tokens import TokenSigner

HISTORY_LIMIT = 100  # the latest interactions in the mail
TEXT_LIMIT = 20_000  # characters of each one


def history_body(issue: Issue, interactions: list[Interaction], reply: str, note: str) -> str:
    customer = issue.customer
    who = (customer.name or (customer.addresses[0].email if customer.addresses else "")) if customer else "-"
    lines = [
        f"Issue #{issue.id}: {issue.subject}",
        f"Status {issue.status}, priority {issue.priority}, category {issue.category.name}, "
        f"assigned to {issue.assignee.name if issue.assignee else 'nobody'}, customer {who}.",
        "",
        f"To answer the customer, reply to this mail (it goes to {reply}).",
        f"To add an internal note, write to {note}.",
        "",
    ]
    for i in interactions:
        sender = i.from_name or i.from_email or "-"
        lines.append(f"--- {iso(i.date or i.created_at)} {i.direction} {i.channel} from {sender}")
        text = (i.new_text or i.full_text or "").strip()
        lines.append(text[:TEXT_LIMIT] + ("\n[... cut]" if len(text) > TEXT_LIMIT else ""))
        lines.append("")
    return "\n".join(lines)


def mail_issue_to_rep(session: Session, issue_id: int, rep_id: int, rep_email: str, signer: TokenSigner,
                      policy: OutboxPolicy, tag_prefix: str) -> bool:
    """Queue the history of the issue to the rep; False when there is no such issue. The caller commits."""
    issue = session.get(Issue, issue_id)
    if issue is None:
        return False
    interactions = sorted(session.scalars(
        select(Interaction).join(Action, Action.interaction_id == Interaction.id)
        .where(Action.issue_id == issue_id).order_by(Interaction.id.desc()).limit(HISTORY_LIMIT)
        .options(selectinload(Interaction.actions))
    ), key=lambda i: i.id)
    mailbox_address = policy.mailboxes[issue.mailbox][0]
    reply = signer.address(mailbox_address, issue.id, rep_id, "reply")
    note = signer.address(mailbox_address, issue.id, rep_id, "note")
    last = interactions[-1].message_id if interactions else None
    out = Outgoing(
        kind="history", mailbox=issue.mailbox, to=(rep_email,),
        subject=f"{issue.subject or '(no subject)'} {subject_tag(tag_prefix, issue.id)}",
        body=history_body(issue, interactions, reply, note), issue_id=issue.id, rep_id=rep_id,
        reply_to=reply, in_reply_to=last, references=tuple(i.message_id for i in interactions if i.message_id),
        auto=False,
    )
    enqueue(session, out, policy)
    return True
