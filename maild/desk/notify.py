"""The pipeline's emit hook for outbound mail, and the sender's failure hook.

For each stored message it gathers what `decide` needs (the issue at a
glance, a digest of its last interactions, the customer's files that fit in a
notification), queues what `decide` returns, and marks the addresses a bounce
reports as failing. Mail imported
from an archive (`maild import`) never causes mail. Everything here runs in
the transaction that stored the message, so a notification is queued exactly
when its interaction is recorded.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, selectinload

from maild.config import Settings
from maild.ingest.stages.records import Stored
from maild.subjects import subject_tag
from maild.models import (
    Action, Category, Customer, CustomerAddress, Interaction, Issue, OutboxMessage, RawMessage, Rep, table_of,
    utcnow,
)
from maild.tokens import TokenSigner
from maild.outbound.compose import Outgoing
from maild.outbound.decide import DecideContext, FileView, HistoryLine, IssueView, RepView, TriggerView, decide
from maild.outbound.outbox import (
    STANDING_COLUMNS, OutboxPolicy, allowed_by, auto_allowed, enqueue, queue_written, record_note, standing_params,
)
from maild.bulk.optout import opt_out
from maild.desk import attachments, casefile
from maild.desk.repmail import RepMail
from maild.desk.deskmail import DeskMail
from maild.desk.lifecycle import wake_pending
from maild.outbound.templates import Templates

log = logging.getLogger("maild.outbound")
HISTORY = 3  # earlier interactions digested in a notification


def _issue_view_statement():
    """The issue at a glance in one read, built once: category, customer, first address, assignee, open issues,
    and the standing of the address an acknowledgement would go to (outbox.STANDING_COLUMNS).

    Plain tables, not the mapped classes: the session runs it without the ORM's per-query set-up
    (it is read for every customer mail)."""
    issue, category, customer, rep = table_of(Issue), table_of(Category), table_of(Customer), table_of(Rep)
    addresses = table_of(CustomerAddress)
    first_address = (select(addresses.c.email).where(addresses.c.customer_id == issue.c.customer_id)
                     .order_by(addresses.c.id).limit(1).scalar_subquery())
    others = issue.alias("others")
    open_issues = (select(func.count(others.c.id))
                   .where(others.c.customer_id == issue.c.customer_id, others.c.status != "closed").scalar_subquery())
    return (
        select(issue.c.id, issue.c.subject, issue.c.status, issue.c.mailbox, category.c.name, issue.c.assignee_id,
               first_address, customer.c.name, issue.c.priority, rep.c.name, open_issues, issue.c.customer_id,
               *STANDING_COLUMNS)
        .join(category, category.c.id == issue.c.category_id)
        .outerjoin(customer, customer.c.id == issue.c.customer_id)
        .outerjoin(rep, rep.c.id == issue.c.assignee_id)
        .where(issue.c.id == bindparam("issue_id"))
    )


_ISSUE_VIEW = _issue_view_statement()


def _from_rep(stored: Stored) -> bool:
    """A rep's own mail, proven by the token issued to that rep (an auto-reply never counts)."""
    return (
        stored.rep_id is not None and stored.rep_id == stored.token_rep_id
        and stored.token_purpose in ("reply", "note") and not stored.auto
    )


class _Trigger(NamedTuple):
    """What a notification says of the mail that caused it, from the record the store stage kept (no read)."""

    message_id: str | None
    references: list
    from_email: str | None
    from_name: str
    subject: str
    new_text: str
    bounce: dict | None
    has_files: bool

    @classmethod
    def of(cls, stored: Stored) -> _Trigger:
        r = stored.record
        if r is None:
            raise ValueError(f"stored interaction without its record: interaction={stored.interaction_id}")
        return cls(r["message_id"], r["references"], r["from_email"], r["from_name"], r["subject"], r["new_text"],
                   r["bounce"], stored.has_files)


class _Standing(NamedTuple):
    """Whether automatic mail to one address (by its key) was allowed when the issue was read."""

    key: str | None
    allowed: bool


class Notifier:
    def __init__(self, settings: Settings, signer: TokenSigner | None, templates: Templates) -> None:
        self.settings = settings
        self.signer = signer
        self.templates = templates
        self.policy = OutboxPolicy.from_settings(settings)
        self.repmail = RepMail(settings, self.policy, signer)
        self.deskmail = DeskMail(settings, self.policy, signer)

    # -- the emit hook -----------------------------------------------------------------

    def __call__(self, session: Session, stored: Stored) -> None:
        if stored.outcome == "desk":  # a rep's own mail to their desk address
            self.deskmail.handle(session, stored)
            return
        if stored.outcome != "interaction" or stored.source == "import":
            return
        if stored.interaction_id is None or stored.issue_id is None:
            raise ValueError(f"stored interaction without ids: interaction={stored.interaction_id} "
                             f"issue={stored.issue_id}")
        if stored.token_purpose == "unsubscribe":  # a campaign's unsubscribe address: an opt-out, nothing sent
            opt_out(session, self._unsubscribing(session, stored))
            return
        trigger = _Trigger.of(stored)
        if trigger.bounce:
            self._mark_failing(session, trigger.bounce, stored.issue_id)
            return
        if _from_rep(stored):
            self.repmail.handle(session, stored, session.get_one(Interaction, stored.interaction_id))
            return
        with session.no_autoflush:
            self._notify(session, stored, trigger)

    def _notify(self, session: Session, stored: Stored, trigger_row: _Trigger) -> None:
        """A customer's mail: what decide says to send, each written as it is queued (before the
        batch's next mail is stored, so a conversation's records stay in order)."""
        assert stored.issue_id is not None and stored.interaction_id is not None
        wake_pending(session, stored)  # the customer answered: a pending issue is open again
        # The reads below are Core: what earlier hooks changed through the ORM (an issue closed
        # or assigned by a rep's command, this one woken) is written first (nothing: no cost).
        session.flush()
        # A new issue has nothing before its first mail: no digest to read. The sender's
        # standing (for an acknowledgement) comes with the issue, in the same read.
        now = utcnow()
        issue, standing = self._issue_view_standing(session, stored.issue_id, trigger_row.from_email or "", now,
                                                    before=None if stored.new_issue else stored.interaction_id)
        carried: tuple = ()
        listed: tuple[FileView, ...] = ()
        if trigger_row.has_files and self._may_notify(stored):
            interaction = session.get_one(Interaction, stored.interaction_id)
            files, left = attachments.fit(attachments.of_interaction(interaction),
                                          self.settings.outbound.notify_attachments_max)
            carried = attachments.load(session, files)
            listed = tuple(FileView(f.filename, f.size) for f in left)
        t = trigger_row
        trigger = TriggerView(t.message_id, tuple(t.references or ()), t.from_email, t.from_name or "",
                              t.subject or "", t.new_text or "", carried, listed)
        for out in decide(stored, issue, trigger, self._context(session, issue, standing)):
            queued = queue_written(session, out, self.policy)  # written now: the next mail's reads see it
            log.info("queued message_id=%s kind=%s issue=%s to=%s", queued.message_id, out.kind, out.issue_id,
                     ",".join(out.to))

    def _unsubscribing(self, session: Session, stored: Stored) -> int:
        """The campaign issue the unsubscribe token names: its customer is the one who asked,
        even when threading followed a merge of that issue to someone else's."""
        raw = session.get(RawMessage, stored.raw_id)
        interaction = session.get(Interaction, stored.interaction_id)
        candidates = [*(raw.envelope_to if raw else ()), *(interaction.to if interaction else ()),
                      *(interaction.cc if interaction else ())]
        named = self.signer.find(candidates, self.settings.own_addresses) if self.signer is not None else None
        if named is not None and named.purpose == "unsubscribe" and named.issue_id is not None:
            return named.issue_id
        assert stored.issue_id is not None
        return stored.issue_id

    def _may_notify(self, stored: Stored) -> bool:
        """Whether `decide` can notify reps of this mail (only then are its files read)."""
        return self.signer is not None and not stored.auto and stored.rep_id is None and stored.customer_id is not None

    def _issue_view(self, session: Session, issue_id: int, before: int | None = None) -> IssueView:
        """The issue at a glance, in one read; with `before`, the digest of the interactions before that one."""
        if session.autoflush:  # a plain-table read: what the ORM holds unwritten is written first
            session.flush()
        return self._issue_view_standing(session, issue_id, "", utcnow(), before)[0]

    def _issue_view_standing(self, session: Session, issue_id: int, address: str, now: datetime,
                             before: int | None = None) -> tuple[IssueView, _Standing]:
        """_issue_view, and whether automatic mail to `address` is allowed now, in the same read."""
        row = session.execute(_ISSUE_VIEW, {"issue_id": issue_id, **standing_params(self.policy, address, now)}).one()
        issue = IssueView(
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7] or "", priority=row[8],
            assignee_name=row[9] or "", customer_open_issues=row[10] or 0, customer_id=row[11],
            history=self._history(session, issue_id, before) if before is not None else (),
        )
        key = self.policy.rules.key(address) if address else None
        return issue, _Standing(key, allowed_by(self.policy, row[12], row[13], now))

    def _history(self, session: Session, issue_id: int, before: int) -> tuple[HistoryLine, ...]:
        """The last interactions of the correspondence before `before`, oldest first, one line each."""
        rows = session.scalars(
            select(Interaction).join(Action, Action.interaction_id == Interaction.id)
            .where(Action.issue_id == issue_id, Interaction.id < before,
                   # a rep's own mail to maild: the reply that went out stands for it
                   ~((Interaction.direction == "internal") & (Interaction.channel == "email")))
            .options(selectinload(Interaction.attachments))
            .order_by(Interaction.id.desc()).limit(HISTORY)
        ).all()
        return tuple(_history_line(i) for i in reversed(rows))

    def rep_views(self, session: Session, issue: IssueView) -> tuple[tuple[RepView, ...], RepView | None]:
        """Who hears of this issue: its assignee, else the category's or mailbox's reps, else every rep."""
        reps = self._active_reps(session)
        mailbox = self.settings.mailbox_named(issue.mailbox)
        category = next((c for c in self.settings.category if c.name == issue.category), None)
        wanted = (category.reps if category and category.reps else ()) or mailbox.reps
        chosen = tuple(reps[e.lower()] for e in wanted if e.lower() in reps) if wanted else tuple(reps.values())
        assignee = next((r for r in reps.values() if r.id == issue.assignee_id), None)
        return chosen, assignee

    @staticmethod
    def _active_reps(session: Session) -> dict[str, RepView]:
        """The active reps by address, read once per session: they change only when the config is synced."""
        reps = session.info.get("maild.active_reps")
        if reps is None:
            reps = session.info["maild.active_reps"] = {
                r.email: RepView(r.id, r.name, r.email) for r in session.scalars(select(Rep).where(Rep.active.is_(True)))
            }
        return reps

    def _context(self, session: Session, issue: IssueView, standing: _Standing) -> DecideContext:
        mailbox = self.settings.mailbox_named(issue.mailbox)
        reps, assignee = self.rep_views(session, issue)
        signer = self.signer

        def allowed(address: str) -> bool:
            if standing.key is not None and self.policy.rules.key(address) == standing.key:
                return standing.allowed  # read with the issue; nothing was queued to it since
            return auto_allowed(session, self.policy, address)

        return DecideContext(
            templates=self.templates,
            tag=lambda n: subject_tag(self.settings.threading.tag_prefix, n),
            mailbox_address=mailbox.address,
            signature=mailbox.signature,
            acknowledge=mailbox.acknowledge,
            reps=reps,
            assignee=assignee,
            reply_address=(lambda i, r, p: signer.address(mailbox.address, i, r, p)) if signer else None,
            auto_allowed=allowed,
            desk_address=lambda rep_id: casefile.desk_address(self.settings, signer, rep_id),
        )

    def _mark_failing(self, session: Session, bounce: dict, issue_id: int | None = None) -> None:
        """No automatic mail to the addresses a bounce reports, for `failing_days`; the reps are told."""
        recipients = list(bounce.get("recipients") or [])
        row = None
        if bounce.get("original_message_id"):
            row = session.scalar(select(OutboxMessage).where(OutboxMessage.message_id == bounce["original_message_id"]))
        if not recipients and row is not None:
            recipients = list(row.recipients)
        addresses = [r for r in recipients if "@" in r]
        if not addresses:
            return
        self.mark_failing(session, addresses)
        status = bounce.get("status")
        error = "; ".join(f"{a} bounced" + (f": status {status}" if status else "") for a in addresses)
        if issue_id is not None:
            subject = self._subject(session, row) if row is not None else ""
            self._tell(session, row.mailbox if row else None, issue_id, "delivery_failed",
                       subject=subject, recipients=", ".join(addresses), error=error)

    def mark_failing(self, session: Session, addresses: list[str]) -> None:
        """The rule a bounce and a relay's 5xx share: no automatic mail to these for `failing_days`."""
        keys = [self.policy.rules.key(a) for a in addresses if "@" in a]
        if keys:
            until = utcnow() + timedelta(days=self.settings.outbound.failing_days)
            session.execute(update(CustomerAddress).where(CustomerAddress.key.in_(keys)).values(failing_until=until))
            log.info("marked failing: %s", ",".join(keys))

    # -- the sender's hooks ---------------------------------------------------------------

    def _subject(self, session: Session, row: OutboxMessage) -> str:
        if row.subject is not None:
            return row.subject
        return session.scalar(select(Interaction.subject).where(Interaction.id == row.interaction_id)) or ""

    def _tell(self, session: Session, mailbox: str | None, issue_id: int, template: str, **variables: str) -> None:
        """A note on the issue, and one notice to its assignee, else its reps."""
        issue = self._issue_view(session, issue_id)
        reps, assignee = self.rep_views(session, issue)
        mailbox = mailbox or issue.mailbox
        r = self.templates.render(template, issue_id=issue.id, **(variables | {"subject": variables.get("subject")
                                                                                 or issue.subject}))
        note = Outgoing(kind="failure", mailbox=mailbox, to=(), subject=r.subject, body=r.body, issue_id=issue.id)
        record_note(session, note, self.policy)
        for rep in (assignee,) if assignee else reps:
            enqueue(session, Outgoing(kind="failure", mailbox=mailbox, to=(rep.email,), subject=r.subject,
                                      body=r.body, issue_id=issue.id, rep_id=rep.id, auto=True), self.policy)

    def _told(self, row: OutboxMessage, what: str) -> bool:
        """Whether a row's trouble is told on its issue: not for a notice of trouble itself (no chains)."""
        if row.issue_id is None or row.kind == "failure":
            log.warning("outbox id=%s kind=%s %s: %s", row.id, row.kind, what, row.last_error)
            return False
        return True

    def delivery_failed(self, session: Session, row: OutboxMessage) -> None:
        """Record a failed mail on its issue and tell the issue's assignee, else its reps."""
        if row.issue_id is not None and self._told(row, "failed"):
            self._tell(session, row.mailbox, row.issue_id, "delivery_failed", subject=self._subject(session, row),
                       recipients=", ".join(row.recipients), error=row.last_error or "")

    def recipients_refused(self, session: Session, row: OutboxMessage, refused: dict[str, tuple[int, str]]) -> None:
        """The relay refused some recipients for good (5xx): marked failing, noted, told once."""
        self.mark_failing(session, list(refused))
        if row.issue_id is not None and self._told(row, "refused"):
            error = "; ".join(f"the relay refused {a}: {code} {text}".rstrip() for a, (code, text) in refused.items())
            self._tell(session, row.mailbox, row.issue_id, "delivery_failed", subject=self._subject(session, row),
                       recipients=", ".join(refused), error=error)

    def delivery_unknown(self, session: Session, row: OutboxMessage) -> None:
        """A mail whose delivery was ambiguous twice: not sent again; the reps decide."""
        if row.issue_id is not None and self._told(row, "unknown"):
            self._tell(session, row.mailbox, row.issue_id, "delivery_unknown", subject=self._subject(session, row),
                       recipients=", ".join(row.recipients), error=row.last_error or "",
                       message_id=row.message_id)


def _history_line(i: Interaction) -> HistoryLine:
    when = (i.date or i.created_at).strftime("%Y-%m-%d %H:%M")
    if i.direction == "outbound":
        who, what = i.from_name or i.from_email or "us", "to the customer"
    else:
        who, what = i.from_name or i.from_email or "?", i.direction if i.channel == "email" else i.channel
    text = " ".join(i.new_text.split())
    text = text if len(text) <= 160 else text[:157].rstrip() + "..."
    files = f" [{len(i.attachments)} attachment{'s' if len(i.attachments) != 1 else ''}]" if i.attachments else ""
    return HistoryLine(when, who, what, (text or "(no text)") + files)
