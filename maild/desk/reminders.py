"""Reminders before a turnaround target is missed, and an escalation when it is.

One pass (`Reminders.check`, run by the scheduler every `sla.interval` and by
`maild sla check`) looks at every issue that is not closed: past
`sla.remind_at` of a target, its assignee (else the category's reps, else the
mailbox's, else every rep) gets a reminder with the issue's summary and the
addresses to answer it; past the target, `sla.escalate_to` (a lead; the
same reps when none is configured) gets an escalation and the breach is
recorded on the issue. Each goes once per issue, target and kind: its
TurnaroundNotice row is inserted in the transaction that queues the mail.
Nothing here sends: the outbox does.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.desk.once import insert_once
from maild.desk.turnaround import TARGETS, Turnaround, pauses_of, reconcile
from maild.models import Interaction, Issue, Rep, TurnaroundNotice, table_of, utcnow
from maild.outbound.compose import Outgoing
from maild.outbound.decide import with_tag
from maild.outbound.outbox import OutboxPolicy, enqueue
from maild.outbound.templates import Templates
from maild.subjects import subject_tag
from maild.timefmt import aware
from maild.tokens import TokenSigner

log = logging.getLogger("maild.reminders")

WORDS = {"first_response": "first response", "resolution": "resolution"}


@dataclass(frozen=True)
class Due:
    """A notice one pass decided to send."""

    issue_id: int
    target: str  # first_response, resolution
    kind: str  # reminder, escalation
    elapsed: float  # business seconds
    limit: float  # the target, in business seconds


def _hours(value: float) -> str:
    return f"{value / 3600:.1f}"


class Reminders:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], signer: TokenSigner | None,
                 templates: Templates, turnaround: Turnaround) -> None:
        self.settings, self.sessions, self.signer = settings, sessions, signer
        self.templates, self.turnaround = templates, turnaround
        self.policy = OutboxPolicy.from_settings(settings)

    def check(self, now: datetime | None = None) -> Counter:
        """One pass: every due reminder and escalation queued, each in its own transaction."""
        now = aware(now) if now is not None else utcnow()
        with self.sessions() as session, session.begin():
            reconcile(session, now)
            due = self._due(session, now)
        counts: Counter = Counter()
        for d in due:
            with self.sessions() as session, session.begin():
                if self._send(session, d, now):
                    counts[d.kind] += 1
        if counts:
            log.info("sla check: %s", " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        return counts

    def _due(self, session: Session, now: datetime) -> list[Due]:
        issues = list(session.scalars(select(Issue).where(Issue.status != "closed").order_by(Issue.id)))
        ids = [i.id for i in issues]
        sent: set[tuple[int, str, str]] = set()
        for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            sent |= set(session.execute(select(TurnaroundNotice.issue_id, TurnaroundNotice.target,
                                               TurnaroundNotice.kind).where(TurnaroundNotice.issue_id.in_(chunk))))
        pauses = pauses_of(session, ids)
        remind_at = self.settings.sla.remind_at
        due = []
        for issue in issues:
            targets = self.turnaround.issue_targets(issue)
            for target in TARGETS:
                limit = targets.of(target)
                if limit is None or (target == "first_response" and issue.first_response_at is not None):
                    continue
                if (issue.id, target, "escalation") in sent:
                    continue
                spent = self.turnaround.measure(issue, now, pauses.get(issue.id, []), limit)
                if spent >= limit:
                    due.append(Due(issue.id, target, "escalation", spent, limit))
                elif spent >= remind_at * limit and (issue.id, target, "reminder") not in sent:
                    due.append(Due(issue.id, target, "reminder", spent, limit))
        return due

    def _send(self, session: Session, d: Due, now: datetime) -> bool:
        row = {"issue_id": d.issue_id, "target": d.target, "kind": d.kind, "elapsed_seconds": round(d.elapsed),
               "target_seconds": round(d.limit), "created_at": now}
        if not insert_once(session, table_of(TurnaroundNotice), row, ["issue_id", "target", "kind"]):
            return False  # sent already, by another pass
        issue = session.get_one(Issue, d.issue_id)
        reps, assignee = self._reps(session, issue)
        if d.kind == "escalation":
            issue.breached_at = issue.breached_at or now
            leads = self.settings.sla.escalate_to
            recipients: list[tuple[str, Rep | None]] = [(a, None) for a in leads] or [(r.email, r) for r in reps]
        else:
            recipients = [(r.email, r) for r in ((assignee,) if assignee else reps)]
        for address, rep in recipients:
            self._queue(session, issue, d, address, rep, now)
        log.info("sla %s issue=%s target=%s elapsed=%ss of %ss to=%s", d.kind, d.issue_id, d.target,
                 round(d.elapsed), round(d.limit), ",".join(a for a, _ in recipients) or "-")
        return True

    def _reps(self, session: Session, issue: Issue) -> tuple[list[Rep], Rep | None]:
        """Who hears of an issue: its assignee, else the category's reps, else the mailbox's, else every rep."""
        active = {r.email.lower(): r for r in session.scalars(select(Rep).where(Rep.active.is_(True)))}
        category = next((c for c in self.settings.category if c.name == issue.category.name), None)
        wanted = (category.reps if category else ()) or self.settings.mailbox_named(issue.mailbox).reps
        reps = [active[e.lower()] for e in wanted if e.lower() in active] if wanted else list(active.values())
        assignee = active.get(issue.assignee.email.lower()) if issue.assignee else None
        return reps, assignee

    def _queue(self, session: Session, issue: Issue, d: Due, address: str, rep: Rep | None, now: datetime) -> None:
        mailbox = self.settings.mailbox_named(issue.mailbox)
        reply = note = ""
        if self.signer is not None:
            reply = self.signer.address(mailbox.address, issue.id, rep.id if rep else None, "reply") if rep else ""
            note = self.signer.address(mailbox.address, issue.id, rep.id, "note") if rep else ""
        last = session.scalar(select(Interaction.new_text).where(
            Interaction.direction == "inbound", Interaction.actions.any(issue_id=issue.id))
            .order_by(Interaction.id.desc()).limit(1)) or ""
        customer = issue.customer.addresses[0].email if issue.customer and issue.customer.addresses else ""
        r = self.templates.render(
            f"turnaround_{d.kind}", issue_id=issue.id, subject=issue.subject, customer=customer,
            customer_name=issue.customer.name if issue.customer else "", status=issue.status,
            priority=issue.priority, category=issue.category.name, mailbox=issue.mailbox,
            assignee=issue.assignee.name if issue.assignee else "nobody", opened=aware(issue.opened_at).isoformat(),
            target=WORDS[d.target], target_hours=_hours(d.limit), elapsed_hours=_hours(d.elapsed),
            percent=str(round(100 * d.elapsed / d.limit)), reply_address=reply, note_address=note,
            rep_name=rep.name if rep else "", text=last[:2000],
        )
        enqueue(session, Outgoing(
            kind=f"sla-{d.kind}", mailbox=issue.mailbox, to=(address,),
            subject=with_tag(r.subject, subject_tag(self.settings.threading.tag_prefix, issue.id)),
            body=r.body, issue_id=issue.id, rep_id=rep.id if rep else None, reply_to=reply or None, auto=True,
        ), self.policy, now=now)
