"""Deciding notifications: pure, from a stored message to the mails it causes.

A customer's new issue gets an acknowledgement (when the mailbox wants one)
and a notification to the reps; a customer's reply notifies the assignee, or
the reps when nobody has taken the issue. A notification gives the rep the
case at a glance (status, assignee, priority, category, the customer and their
open issues, a digest of the last interactions) and the customer's files:
those the caller chose to attach, and the others listed with their sizes.
Automatic mail, bounces, reps' and our own mail cause nothing here. This
module only returns Outgoing records; it never writes and never sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Callable

from maild.ingest.stages.records import Stored
from maild.outbound.compose import OutAttachment, Outgoing
from maild.outbound.templates import Templates

REPLY_PREFIX_RE = re.compile(r"^\s*(re|aw|sv|antw|vs|ref|r)\s*:\s*", re.I)


@dataclass(frozen=True)
class IssueView:
    id: int
    subject: str
    status: str
    mailbox: str
    category: str
    assignee_id: int | None
    customer_email: str | None
    customer_name: str
    priority: str = "normal"
    assignee_name: str = ""
    customer_open_issues: int = 0  # the customer's issues not closed, this one included
    history: tuple[HistoryLine, ...] = ()  # the last interactions before the new one, oldest first
    customer_id: int | None = None


@dataclass(frozen=True)
class HistoryLine:
    """One earlier interaction in a notification's digest."""

    when: str
    who: str
    what: str  # inbound, outbound, note, phone, ...
    text: str  # the start of its new text, on one line


@dataclass(frozen=True)
class FileView:
    """A customer's file named in a notification: attached to it, or to fetch with #attachments."""

    filename: str
    size: int


@dataclass(frozen=True)
class TriggerView:
    """The interaction that was just stored."""

    message_id: str | None
    references: tuple[str, ...]
    from_email: str | None
    from_name: str
    subject: str
    new_text: str
    attached: tuple[OutAttachment, ...] = ()  # the files the notification carries
    listed: tuple[FileView, ...] = ()  # the files over the size limit: named, not carried


@dataclass(frozen=True)
class RepView:
    id: int
    name: str
    email: str


@dataclass(frozen=True)
class DecideContext:
    templates: Templates
    tag: Callable[[int], str]
    mailbox_address: str
    signature: str
    acknowledge: bool
    reps: tuple[RepView, ...]  # to notify while nobody has taken the issue
    assignee: RepView | None
    reply_address: Callable[[int, int | None, str], str] | None  # None: no signing secret
    auto_allowed: Callable[[str], bool]  # rate limit and bounced-address check
    desk_address: Callable[[int], str | None] | None = None  # a rep's own desk address, by rep id


def reply_subject(subject: str) -> str:
    subject = subject.strip() or "(no subject)"
    return subject if REPLY_PREFIX_RE.match(subject) else f"Re: {subject}"


def with_tag(subject: str, tag: str) -> str:
    return subject if tag in subject else f"{subject} {tag}"


def _acknowledgement(issue: IssueView, trigger: TriggerView, ctx: DecideContext) -> Outgoing | None:
    to = trigger.from_email
    if not ctx.acknowledge or not to or not ctx.auto_allowed(to):
        return None
    r = ctx.templates.render(
        "acknowledgement", subject=reply_subject(trigger.subject), customer_name=issue.customer_name,
        issue_id=issue.id, signature=ctx.signature, mailbox_address=ctx.mailbox_address,
    )
    return Outgoing(
        kind="acknowledgement", mailbox=issue.mailbox, to=(to,), subject=with_tag(r.subject, ctx.tag(issue.id)),
        body=r.body, issue_id=issue.id, in_reply_to=trigger.message_id,
        references=(*trigger.references, *([trigger.message_id] if trigger.message_id else [])),
        auto=True, to_customer=True, customer_id=issue.customer_id,
    )


def _notifications(template: str, issue: IssueView, trigger: TriggerView, ctx: DecideContext) -> list[Outgoing]:
    if ctx.reply_address is None:
        return []
    out = []
    for rep in (ctx.assignee,) if ctx.assignee else ctx.reps:
        r = ctx.templates.render(template, **_case(issue, trigger), rep_name=rep.name,
                                 mailbox_address=ctx.mailbox_address,
                                 note_address=ctx.reply_address(issue.id, rep.id, "note"),
                                 desk_address=(ctx.desk_address(rep.id) if ctx.desk_address else None) or "")
        # No In-Reply-To here: the rep never got the customer's mail; the outbox
        # threads every notice of the issue under its thread root instead.
        out.append(Outgoing(
            kind="notification", mailbox=issue.mailbox, to=(rep.email,), subject=with_tag(r.subject, ctx.tag(issue.id)),
            body=r.body, issue_id=issue.id, rep_id=rep.id, reply_to=ctx.reply_address(issue.id, rep.id, "reply"),
            auto=True, attachments=trigger.attached,
        ))
    return out


def _case(issue: IssueView, trigger: TriggerView) -> dict:
    """The template variables that show the case at a glance."""
    return dict(
        subject=trigger.subject or issue.subject, issue_id=issue.id, mailbox=issue.mailbox, category=issue.category,
        status=issue.status, priority=issue.priority, assignee=issue.assignee_name,
        customer=trigger.from_email or "", customer_name=trigger.from_name or issue.customer_name,
        open_issues=issue.customer_open_issues, text=trigger.new_text,
        history=[{"when": h.when, "who": h.who, "what": h.what, "text": h.text} for h in issue.history],
        attached=[{"filename": a.filename, "size": len(a.data)} for a in trigger.attached],
        listed=[{"filename": f.filename, "size": f.size} for f in trigger.listed],
    )


def decide(stored: Stored, issue: IssueView | None, trigger: TriggerView, ctx: DecideContext) -> list[Outgoing]:
    if stored.outcome != "interaction" or issue is None or stored.auto:
        return []
    if stored.rep_id is not None or stored.customer_id is None:
        return []  # reps' and our own mail: the rep-reply path handles it, nothing to tell
    if stored.new_issue:
        ack = _acknowledgement(issue, trigger, ctx)
        return ([ack] if ack else []) + _notifications("rep_new_issue", issue, trigger, ctx)
    return _notifications("rep_customer_reply", issue, trigger, ctx)
