"""A rep's mail, proven by its reply token: commands, canned responses, spell
check, then the reply to the customer (or an internal note).

Only mail whose signed token names the rep it comes from reaches this module
(the pipeline checked From and aliases against the token). It applies the
commands at the top, expands canned responses, and queues the customer's mail
from the mailbox address, never the rep's own. Anything wrong (an unknown
command or canned name) sends the customer nothing and tells the rep why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from maild.config import Settings
from maild.ingest.stages.records import Stored
from maild.subjects import subject_tag
from maild.models import Action, Attachment, Interaction, Issue, OutboxMessage, Rep
from maild.desk import attachments
from maild.desk.assign import Assignments, Change, short_names
from maild.desk.canned import expand
from maild.models import CannedUse
from maild.desk.commands import parse_commands
from maild.outbound.compose import Outgoing
from maild.outbound.decide import reply_subject, with_tag
from maild.desk.issue_commands import CommandError, apply_commands
from maild.desk.picklists import Picklists
from maild.outbound.outbox import OutboxPolicy, enqueue
from maild.desk.spelling import Speller, report

log = logging.getLogger("maild.reps")


@dataclass(frozen=True)
class RepContext:
    rep: Rep
    issue: Issue
    interaction: Interaction  # the rep's own mail as stored


class RepMail:
    def __init__(self, settings: Settings, policy: OutboxPolicy, signer) -> None:
        self.settings = settings
        self.policy = policy
        self.signer = signer
        self.canned = {c.name.lower(): c.body for c in settings.canned}
        self.picklists = Picklists(settings.picklist)
        self.short_names = short_names(settings)
        self.assignments = Assignments(settings, policy, signer)

    def handle(self, session: Session, stored: Stored, interaction: Interaction) -> None:
        ctx = RepContext(session.get_one(Rep, stored.rep_id), session.get_one(Issue, stored.issue_id), interaction)
        parsed = parse_commands(interaction.new_text)
        is_note = stored.token_purpose == "note" or any(c.name == "note" for c in parsed.commands)
        errors = list(parsed.errors)
        holder = ctx.issue.assignee_id
        if not errors:
            try:
                apply_commands(session, ctx.issue, ctx.rep, ctx.interaction, parsed.commands, self.picklists,
                               self.short_names)
            except CommandError as exc:
                errors.append(str(exc))
        if errors:
            self._tell_rep(session, ctx, "Your mail was not sent", _errors_text(errors))
            return
        if ctx.issue.merged_into_id is not None:  # #merge N: the reply belongs to the issue it went into
            ctx = RepContext(ctx.rep, session.get_one(Issue, ctx.issue.merged_into_id), ctx.interaction)
        self.assignments.announce(session, Change(ctx.issue, holder, ctx.rep))
        asked = [c for c in parsed.commands if c.name == "attachments"]
        if asked:
            self._send_attachments(session, ctx, [name for c in asked for name in c.args])
        if any(c.name == "send" for c in parsed.commands):
            self._release_held(session, ctx)
            return
        variables = {"customer_name": ctx.issue.customer.name if ctx.issue.customer else "",
                     "issue_id": str(ctx.issue.id), "rep_name": ctx.rep.name}
        expanded = expand(parsed.body, self.canned, variables)
        if expanded.unknown:
            self._tell_rep(session, ctx, "Your mail was not sent",
                           f"Unknown canned response(s): {', '.join(expanded.unknown)}.\n"
                           f"Known: {', '.join(sorted(self.canned)) or 'none'}.")
            return
        body = expanded.body.strip()
        if expanded.used and (is_note or body):  # what the resources report counts
            session.add_all(CannedUse(name=name, issue_id=ctx.issue.id, interaction_id=ctx.interaction.id,
                                      rep_id=ctx.rep.id) for name in expanded.used)
        if is_note:
            self._record_note(session, ctx, body)
        elif body:
            self._reply(session, ctx, body)
        log.info("rep mail issue=%s rep=%s note=%s commands=%s", ctx.issue.id, ctx.rep.email, is_note,
                 ",".join(c.name for c in parsed.commands) or "-")

    # -- the customer's reply ----------------------------------------------------------

    def _customer_thread(self, session: Session, issue: Issue) -> tuple[str | None, tuple[str, ...]]:
        """In-Reply-To and References continuing the customer's own thread."""
        last = session.scalar(
            select(Interaction)
            .where(Interaction.id.in_(select_issue_interactions(issue.id)), Interaction.direction == "inbound",
                   Interaction.customer_id == issue.customer_id)
            .order_by(Interaction.id.desc())
            .limit(1)
        )
        if last is None or not last.message_id:
            return None, ()
        return last.message_id, (*last.references, last.message_id)

    def _reply(self, session: Session, ctx: RepContext, body: str) -> None:
        issue = ctx.issue
        customer = issue.customer.addresses[0].email if issue.customer and issue.customer.addresses else None
        if customer is None:
            self._tell_rep(session, ctx, "Your mail was not sent", "This issue has no customer address to answer.")
            return
        files = attachments.of_interaction(ctx.interaction)  # the rep's files go to the customer too
        refused = attachments.too_large_for_reply(files, self.settings.outbound.max_attachment_size)
        if refused:
            self._tell_rep(session, ctx, "Your reply was not sent", refused)
            return
        mailbox = self.settings.mailbox_named(issue.mailbox)
        in_reply_to, references = self._customer_thread(session, issue)
        signature = f"\n\n{mailbox.signature}" if mailbox.signature else ""
        out = Outgoing(
            kind="reply", mailbox=issue.mailbox, to=(customer,), cc=tuple(issue.cc),
            subject=with_tag(reply_subject(issue.subject), subject_tag(self.settings.threading.tag_prefix, issue.id)),
            body=body + signature + "\n", issue_id=issue.id, rep_id=ctx.rep.id,
            in_reply_to=in_reply_to, references=references, auto=False, to_customer=True,
            attachments=attachments.load(session, files),
        )
        mode = self.settings.spelling.mode
        suspects = Speller(mailbox.language, self.settings.spelling.words).check(body) if mode != "off" else ()
        held = mode == "hold" and bool(suspects)
        self._discard_held(session, ctx)  # a corrected reply replaces a held one
        enqueue(session, out, self.policy, status="held" if held else "queued")
        if suspects:
            verb = "is held until you reply with #send, or send a corrected reply" if held else "was sent"
            self._tell_rep(session, ctx, "Spelling: please check your reply",
                           f"Your reply on issue #{issue.id} {verb}. Words to check:\n\n{report(suspects)}")

    def _held(self, session: Session, ctx: RepContext) -> list[OutboxMessage]:
        return list(session.scalars(select(OutboxMessage).where(
            OutboxMessage.issue_id == ctx.issue.id, OutboxMessage.rep_id == ctx.rep.id,
            OutboxMessage.status == "held")))

    def _discard_held(self, session: Session, ctx: RepContext) -> None:
        """A held reply that is replaced was never sent: it leaves no interaction behind."""
        for row in self._held(session, ctx):
            row.status, row.last_error = "discarded", "replaced by a corrected reply"
            if row.interaction_id is not None:
                interaction_id, row.interaction_id = row.interaction_id, None
                session.flush()
                session.execute(delete(Action).where(Action.interaction_id == interaction_id))
                session.execute(delete(Attachment).where(Attachment.interaction_id == interaction_id))
                session.execute(delete(Interaction).where(Interaction.id == interaction_id))

    def _release_held(self, session: Session, ctx: RepContext) -> None:
        held = self._held(session, ctx)
        if not held:
            self._tell_rep(session, ctx, "Nothing to send", f"No reply of yours is held on issue #{ctx.issue.id}.")
        for row in held:
            row.status = "queued"

    def _send_attachments(self, session: Session, ctx: RepContext, names: list[str]) -> None:
        """#attachments [NAME]: the issue's files, by mail to the rep who asked."""
        limit = self.settings.outbound.max_attachment_size
        files = attachments.of_issue(session, ctx.issue.id)
        for body, part in attachments.answer(files, names, limit, ctx.issue.id).mails:
            enqueue(session, Outgoing(
                kind="attachments", mailbox=ctx.issue.mailbox, to=(ctx.rep.email,),
                subject=with_tag(f"Attachments: {ctx.issue.subject}",
                                 subject_tag(self.settings.threading.tag_prefix, ctx.issue.id)),
                body=body + "\n", issue_id=ctx.issue.id, rep_id=ctx.rep.id, auto=True,
                in_reply_to=ctx.interaction.message_id, reply_to=self._address(ctx.issue, ctx.rep.id, "reply"),
                attachments=attachments.load(session, part),
            ), self.policy)

    # -- notes and messages to the rep -------------------------------------------------

    def _record_note(self, session: Session, ctx: RepContext, body: str) -> None:
        """The rep's mail is already recorded (internal); tell the issue's other reps."""
        ctx.interaction.channel = "note"
        ctx.interaction.new_text = body
        others = session.scalars(select(Rep).where(Rep.active.is_(True), Rep.id != ctx.rep.id)).all()
        for rep in others:
            enqueue(session, Outgoing(
                kind="notification", mailbox=ctx.issue.mailbox, to=(rep.email,),
                subject=with_tag(f"Note from {ctx.rep.name}: {ctx.issue.subject}",
                                 subject_tag(self.settings.threading.tag_prefix, ctx.issue.id)),
                body=body + "\n", issue_id=ctx.issue.id, rep_id=rep.id, auto=True,
                reply_to=self._address(ctx.issue, rep.id, "reply"),
            ), self.policy)

    def _address(self, issue: Issue, rep_id: int, purpose: str) -> str | None:
        mailbox = self.settings.mailbox_named(issue.mailbox)
        return self.signer.address(mailbox.address, issue.id, rep_id, purpose) if self.signer else None

    def _tell_rep(self, session: Session, ctx: RepContext, subject: str, text: str) -> None:
        enqueue(session, Outgoing(
            kind="rep-notice", mailbox=ctx.issue.mailbox, to=(ctx.rep.email,),
            subject=with_tag(f"{subject}: {ctx.issue.subject}", subject_tag(self.settings.threading.tag_prefix, ctx.issue.id)),
            body=text + "\n", issue_id=ctx.issue.id, rep_id=ctx.rep.id, auto=True,
            in_reply_to=ctx.interaction.message_id, reply_to=self._address(ctx.issue, ctx.rep.id, "reply"),
        ), self.policy)


def select_issue_interactions(issue_id: int):
    return select(Action.interaction_id).where(Action.issue_id == issue_id)


def _errors_text(errors: list[str]) -> str:
    lines = "\n".join(f"  - {e}" for e in errors)
    return (f"Nothing was sent to the customer and the issue was not changed:\n\n{lines}\n\n"
            "Commands go on lines of their own at the top of your mail, for example:\n"
            "  #close\n  #assign Alice\n  #priority high\n  #tag refund\n")
