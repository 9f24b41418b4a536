"""Merging two issues into one, and splitting an interaction off into a new issue.

A customer who writes twice about one thing gets two issues; one mail that
raises two things needs a second issue. Merge moves every action (every
interaction) of one issue onto the other and leaves the first as a pointer
(status "merged", `merged_into_id`), so mail threading to it lands on the
target (the thread stage follows the pointer). Split starts a new issue from
one interaction, which stays on its first issue as well: one mail, two issues,
as the many-to-many model intends. Nothing here deletes an interaction or
sends mail; the caller commits.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from maild.models import Action, ActionPick, Interaction, Issue, OutboxMessage, utcnow

MERGED = "merged"
_MAX_CHAIN = 50  # merge pointers never loop; the bound only guards bad data


class MergeError(Exception):
    """A merge or split the data does not allow; the message says why."""


def live_issue_id(session: Session, issue_id: int) -> int:
    """The issue an id leads to once merge pointers are followed."""
    for _ in range(_MAX_CHAIN):
        target = session.scalar(select(Issue.merged_into_id).where(Issue.id == issue_id))
        if target is None:
            break
        issue_id = target
    return issue_id


def check_merge(source: Issue, target: Issue) -> None:
    if source.id == target.id:
        raise MergeError("an issue cannot be merged into itself")
    for issue in (source, target):
        if issue.status == MERGED:
            raise MergeError(f"issue #{issue.id} was already merged into #{issue.merged_into_id}")


def _union(first: list[str], second: list[str]) -> list[str]:
    seen = {v.lower() for v in first}
    return [*first, *(v for v in second if v.lower() not in seen)]


def _move_duplicate(session: Session, action: Action, kept: Action) -> None:
    """The interaction is on both issues: the target's action keeps the picks and follow-up of both."""
    have = {(p.picklist, p.value) for p in session.scalars(select(ActionPick).where(ActionPick.action_id == kept.id))}
    for pick in session.scalars(select(ActionPick).where(ActionPick.action_id == action.id)).all():
        if (pick.picklist, pick.value) in have:
            session.delete(pick)
        else:
            pick.action_id = kept.id
    if action.follow_up_required and not kept.follow_up_required:
        kept.follow_up_required = action.follow_up_required
    session.flush()
    session.delete(action)


def merge_issues(session: Session, source: Issue, target: Issue) -> int:
    """Move every interaction of `source` onto `target`; return how many actions moved."""
    check_merge(source, target)
    kept = {a.interaction_id: a for a in session.scalars(select(Action).where(Action.issue_id == target.id))}
    moved = 0
    for action in session.scalars(select(Action).where(Action.issue_id == source.id)).all():
        if action.interaction_id in kept:
            _move_duplicate(session, action, kept[action.interaction_id])
        else:
            action.issue_id = target.id
        moved += 1
    session.flush()
    session.execute(update(OutboxMessage).where(OutboxMessage.issue_id == source.id).values(issue_id=target.id))
    session.execute(update(Issue).where(Issue.merged_into_id == source.id).values(merged_into_id=target.id))
    now = utcnow()
    target.tags = _union(list(target.tags), list(source.tags))
    target.cc = _union(list(target.cc), list(source.cc))
    target.order_id = target.order_id or source.order_id
    target.gift_certificate_id = target.gift_certificate_id or source.gift_certificate_id
    target.customer_id = target.customer_id or source.customer_id
    if target.status == "closed" and source.status in ("open", "pending"):
        target.status, target.closed_at = "open", None  # the merged case was still being worked on
    target.updated_at = now
    source.status, source.merged_into_id, source.closed_at, source.updated_at = MERGED, target.id, now, now
    session.flush()
    return moved


def _noticed(session: Session, issue: Issue, message_id: str) -> Interaction | None:
    """The customer's mail a notice to reps about this issue told of. Notices are outbox rows,
    queued in the transaction that stored that mail: the newest inbound mail on the issue then."""
    queued = session.scalar(select(OutboxMessage.created_at).where(
        OutboxMessage.message_id == message_id, OutboxMessage.issue_id == issue.id))
    if queued is None:
        return None
    return session.scalar(select(Interaction).where(
        Interaction.id.in_(select(Action.interaction_id).where(Action.issue_id == issue.id)),
        Interaction.direction == "inbound", Interaction.created_at <= queued,
    ).order_by(Interaction.id.desc()).limit(1))


def split_source(session: Session, issue: Issue, written: Interaction) -> Interaction:
    """The interaction a rep's mail is written on: the customer's mail whose notification the rep
    answered, or a mail on this issue that its In-Reply-To (else References, newest first) names."""
    on_issue = select(Action.interaction_id).where(Action.issue_id == issue.id)
    wanted = [m for m in dict.fromkeys((written.in_reply_to, *reversed(written.references))) if m][:20]
    for message_id in wanted:
        found = session.scalar(select(Interaction).where(
            Interaction.message_id == message_id, Interaction.id.in_(on_issue), Interaction.id != written.id,
        ).order_by(Interaction.id).limit(1)) or _noticed(session, issue, message_id)
        if found is not None:
            return found
    raise MergeError("reply to the notification of the message to split off (its In-Reply-To names it), "
                     f"on issue #{issue.id}")


def split_issue(session: Session, issue: Issue, source: Interaction, written: Interaction | None = None) -> Issue:
    """A new open issue started from `source` (which stays on `issue` too); the rep's mail is on both."""
    if issue.status == MERGED:
        raise MergeError(f"issue #{issue.id} was merged into #{issue.merged_into_id}: split there")
    now = utcnow()
    new = Issue(
        status="open", category_id=issue.category_id, priority=issue.priority, mailbox=source.mailbox or issue.mailbox,
        customer_id=source.customer_id or issue.customer_id, subject=source.subject or issue.subject, tags=[], cc=[],
        opened_at=now, updated_at=now,
    )
    session.add(new)
    session.flush()
    session.add(Action(issue_id=new.id, interaction_id=source.id, created_at=now))
    if written is not None and written.id != source.id:
        session.add(Action(issue_id=new.id, interaction_id=written.id, created_at=now))
    issue.updated_at = now
    session.flush()
    return new
