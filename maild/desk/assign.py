"""Who holds an issue: finding the rep a `#assign` names, refusing a silent
`#take`, and telling the reps concerned when the assignee changes.

`#assign` takes an email address or alias, a full name, a configured
`[[rep]] short_name`, or a first name when only one rep has it. `#take` on an
issue someone else holds is refused with who holds it, unless written
`#take!`. The new assignee gets the issue's summary with their own reply and
note addresses (so they can answer by mail at once); the previous one is
told. This module never applies a command: issue_commands does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild.config import Settings
from maild.desk import casefile
from maild.models import Issue, Rep
from maild.outbound.compose import Outgoing
from maild.outbound.decide import with_tag
from maild.outbound.outbox import OutboxPolicy, enqueue
from maild.outbound.templates import Templates
from maild.subjects import subject_tag
from maild.tokens import TokenSigner


class RepNotFound(Exception):
    """`#assign` names nobody, or several reps; the message says which and what to write."""


class HeldByOther(Exception):
    """`#take` of an issue another rep holds; the message names them."""


def short_names(settings: Settings) -> dict[str, str]:
    """Configured short name (lowercased) -> rep email."""
    return {r.short_name.lower(): r.email.lower() for r in settings.rep if r.short_name}


def _label(rep: Rep) -> str:
    return f"{rep.name} <{rep.email}>"


def find_rep(session: Session, who: str, shorts: Mapping[str, str] | None = None) -> Rep:
    """The active rep `who` names: email or alias, full name, short name, or a unique first name."""
    wanted = " ".join(who.split()).lower()
    reps = list(session.scalars(select(Rep).where(Rep.active.is_(True)).order_by(Rep.id)))
    by_address = [r for r in reps if wanted in (r.email.lower(), *(a.lower() for a in r.aliases))]
    by_name = [r for r in reps if " ".join(r.name.split()).lower() == wanted]
    short = (shorts or {}).get(wanted)
    by_short = [r for r in reps if short is not None and r.email.lower() == short]
    for found in (by_address, by_name, by_short):
        if len(found) == 1:
            return found[0]
    by_first = [r for r in reps if r.name.split() and r.name.split()[0].lower() == wanted]
    if len(by_first) == 1:
        return by_first[0]
    if len(by_first) > 1 or len(by_name) > 1:
        several = by_first if len(by_first) > 1 else by_name
        raise RepNotFound(f"#assign: {who!r} could be {' or '.join(_label(r) for r in several)}: "
                          "write the email address instead")
    names = ", ".join(r.name for r in reps)
    raise RepNotFound(f"#assign: no rep called {who!r} (reps: {names})")


def check_take(session: Session, issue: Issue, rep: Rep, force: bool) -> None:
    """Refuse taking an issue another active rep holds, unless forced (`#take!`)."""
    if force or issue.assignee_id is None or issue.assignee_id == rep.id:
        return
    holder = session.get(Rep, issue.assignee_id)
    if holder is None or not holder.active:
        return
    raise HeldByOther(f"#take: issue #{issue.id} is held by {_label(holder)}; "
                      "write #take! to take it from them, or ask them to #assign it to you")


@dataclass(frozen=True)
class Change:
    """An assignee change, seen after the commands were applied."""

    issue: Issue
    before: int | None
    by: Rep


class Assignments:
    """Notices to the new and the previous assignee, queued in the caller's transaction."""

    def __init__(self, settings: Settings, policy: OutboxPolicy, signer: TokenSigner | None,
                 templates: Templates | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self.signer = signer
        self.templates = templates or Templates(settings.templates_dir)

    def announce(self, session: Session, change: Change) -> None:
        issue, by = change.issue, change.by
        after = issue.assignee_id
        if after == change.before or after is None:
            return
        new = session.get_one(Rep, after)
        previous = session.get(Rep, change.before) if change.before is not None else None
        if new.id != by.id:
            self._tell_new(session, issue, new, previous, by)
        if previous is not None and previous.id != by.id and previous.active:
            self._tell_previous(session, issue, previous, new, by)

    def _addresses(self, issue: Issue, rep: Rep) -> tuple[str | None, str | None]:
        if self.signer is None:
            return None, None
        address = self.settings.mailbox_named(issue.mailbox).address
        return (self.signer.address(address, issue.id, rep.id, "reply"),
                self.signer.address(address, issue.id, rep.id, "note"))

    def _tag(self, issue: Issue) -> str:
        return subject_tag(self.settings.threading.tag_prefix, issue.id)

    def _tell_new(self, session: Session, issue: Issue, new: Rep, previous: Rep | None, by: Rep) -> None:
        reply, note = self._addresses(issue, new)
        r = self.templates.render(
            "rep_assigned", subject=issue.subject, issue_id=issue.id, rep_name=new.name, by_name=by.name,
            previous=previous.name if previous else "", text=casefile.summary(session, issue),
            mailbox_address=self.settings.mailbox_named(issue.mailbox).address,
            note_address=note or "", desk_address=casefile.desk_address(self.settings, self.signer, new.id) or "",
        )
        enqueue(session, Outgoing(
            kind="notification", mailbox=issue.mailbox, to=(new.email,), subject=with_tag(r.subject, self._tag(issue)),
            body=r.body, issue_id=issue.id, rep_id=new.id, reply_to=reply, auto=True,
        ), self.policy)

    def _tell_previous(self, session: Session, issue: Issue, previous: Rep, new: Rep, by: Rep) -> None:
        r = self.templates.render(
            "rep_unassigned", subject=issue.subject, issue_id=issue.id, rep_name=previous.name, by_name=by.name,
            assignee=new.name, assignee_email=new.email,
        )
        enqueue(session, Outgoing(
            kind="rep-notice", mailbox=issue.mailbox, to=(previous.email,),
            subject=with_tag(r.subject, self._tag(issue)), body=r.body, issue_id=issue.id, rep_id=previous.id,
            auto=True,
        ), self.policy)
