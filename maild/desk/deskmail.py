"""A rep's own desk address: the rep's mail that belongs to no issue yet.

Each rep has a signed address (support+r3-d-....@acme.test, see tokens.py and
`maild reps address`). The pipeline routes a mail to it here only when it
comes From that rep (outcome "desk", no interaction stored); anyone else's
mail to the address is customer mail. It takes:

- `#to ADDR` or `#customer ID|ADDR`, a subject and the text: a new issue for
  that customer, the text sent from the mailbox address, threaded so the
  customer's reply lands on the issue;
- `#log phone|visit|chat` with `#customer` (or `#issue N`) and the text: an
  inbound interaction of that channel by the rep, nothing sent;
- a forwarded customer mail (forwards.py): recorded as the customer's own;
- `#queue [FILTER]` and `#history N`: answered by mail (casefile.py).

Issue commands (#assign, #priority, #pending, ...) in the same mail apply to
the issue. Anything wrong creates nothing and tells the rep why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild.addresses import AddressRules
from maild.config import Settings
from maild.customers.admin import live, owner
from maild.desk import attachments, casefile, forwards
from maild.desk.assign import Assignments, Change, short_names
from maild.desk.canned import expand
from maild.desk.commands import Command, parse_commands
from maild.desk.issue_commands import CommandError, apply_commands
from maild.desk.spelling import Speller, report
from maild.ingest.stages.parse import parse
from maild.ingest.stages.quotes import new_text
from maild.ingest.stages.records import Address, Attachment as Part, ParsedMessage, Stored
from maild.models import (Action, Attachment, Blob, Category, Customer, CustomerAddress, Interaction, Issue,
                          RawMessage, Rep, utcnow)
from maild.outbound.compose import OutAttachment, Outgoing
from maild.outbound.decide import with_tag
from maild.outbound.outbox import OutboxPolicy, enqueue
from maild.subjects import subject_tag
from maild.tokens import TokenSigner

log = logging.getLogger("maild.reps")

DESK = ("to", "customer", "log", "issue", "queue", "history")
HELP = """Your desk address takes, from you only:

  #to pat@example.org        a new case: the subject and text of this mail go to
                             the customer from the mailbox address
  #log phone                 a phone call (or visit, chat) you had, recorded on a
  #customer pat@example.org  new issue, or on the one given by #issue 12
  #queue [open|unassigned|mine|pending|CATEGORY]   the issues waiting
  #history 12                an issue's whole history
  a forwarded customer mail  recorded as that customer's mail (#issue 12 puts it
                             on that issue)

Issue commands such as #assign Bob, #priority high or #pending may follow #to,
#log and a forward."""


class Refused(Exception):
    """Desk mail that cannot be applied; the message is for the rep."""


@dataclass(frozen=True)
class Desk:
    rep: Rep
    mailbox: str
    message: ParsedMessage
    commands: dict[str, Command]  # desk commands by name
    issue_commands: tuple[Command, ...]
    body: str  # the rep's text without the command lines


class DeskMail:
    def __init__(self, settings: Settings, policy: OutboxPolicy, signer: TokenSigner | None) -> None:
        self.settings = settings
        self.policy = policy
        self.signer = signer
        self.rules = AddressRules(settings.ingest.fold_plus_addresses, settings.ingest.case_sensitive_local_part)
        self.own_names = (*settings.own_addresses, *(m.display_name for m in settings.mailbox if m.display_name))
        self.canned = {c.name.lower(): c.body for c in settings.canned}
        self.short_names = short_names(settings)
        self.assignments = Assignments(settings, policy, signer)

    def handle(self, session: Session, stored: Stored) -> None:
        if stored.source == "import" or stored.rep_id is None:
            log.info("desk mail raw=%s from an archive: kept, not applied", stored.raw_id)
            return
        rep = session.get_one(Rep, stored.rep_id)
        raw = session.get_one(RawMessage, stored.raw_id)
        msg = parse(raw.data, tuple(raw.envelope_to or ()), raw.envelope_from, self.own_names)
        inline = forwards.split_inline(msg.text, self.own_names, msg.attachments)
        parsed = parse_commands(new_text(inline.head, self.own_names) if inline else msg.new_text)
        desk = Desk(rep, stored.mailbox, msg, {c.name: c for c in parsed.commands if c.name in DESK},
                    tuple(c for c in parsed.commands if c.name not in DESK), parsed.body.strip())
        try:
            if parsed.errors:
                raise Refused("\n".join(f"  - {e}" for e in parsed.errors))
            with session.begin_nested():  # all or nothing: a refusal leaves no issue or customer behind
                done = self._dispatch(session, desk, inline)
        except (Refused, CommandError) as exc:
            self._tell(session, desk, f"Not done: {msg.subject or '(no subject)'}",
                       f"Nothing was recorded or sent:\n\n{exc}\n\n{HELP}")
            return
        log.info("desk mail raw=%s rep=%s: %s", stored.raw_id, rep.email, done)

    def _dispatch(self, session: Session, desk: Desk, inline: forwards.Inline | None) -> str:
        names = set(desk.commands)
        if names & {"queue", "history"}:
            if desk.issue_commands or names - {"queue", "history"}:
                raise Refused("#queue and #history take no other commands")
            return self._queue(session, desk) if "queue" in names else self._history(session, desk)
        if "log" in names:
            return self._log(session, desk)
        if "to" not in names:
            # An inline forward names its sender in the rep's own text: it wins over files that came
            # with it (a customer's attached .eml must never choose who "the customer" is).
            found = [inline.forwarded] if inline else forwards.attached(desk.message, self.own_names)
            if found:
                return self._forwarded(session, desk, found)
        if names & {"to", "customer"}:
            return self._new_case(session, desk)
        raise Refused("This mail has no command this address understands.")

    # -- a new case to a customer ------------------------------------------------------

    def _new_case(self, session: Session, desk: Desk) -> str:
        if "issue" in desk.commands:
            raise Refused("#to opens a new issue: to write on issue #N, reply to its notification instead")
        subject = desk.message.subject.strip()
        if not subject:
            raise Refused("A new case needs a subject: it is the subject of the mail to the customer.")
        customer, address = self._customer(session, desk, None)
        if address is None:
            raise Refused(f"Customer {customer.id} has no address to write to: use #to ADDRESS.")
        issue = self._open_issue(session, desk, customer, subject)
        body = self._expand(desk, issue, customer)
        if not body:
            raise Refused("A new case needs the text to send the customer, below the commands.")
        files = self._files(session, desk.message.attachments)
        if sum(len(f.data) for f in files) > self.settings.outbound.max_attachment_size:
            raise Refused(f"Its attachments are over the limit of {self.settings.outbound.max_attachment_size} "
                          "bytes for mail to customers.")
        mailbox = self.settings.mailbox_named(issue.mailbox)
        signature = f"\n\n{mailbox.signature}" if mailbox.signature else ""
        mode = self.settings.spelling.mode
        suspects = Speller(mailbox.language, self.settings.spelling.words).check(body) if mode != "off" else ()
        held = mode == "hold" and bool(suspects)
        row = enqueue(session, Outgoing(
            kind="reply", mailbox=issue.mailbox, to=(address,), subject=with_tag(subject, self._tag(issue)),
            body=body + signature + "\n", issue_id=issue.id, rep_id=desk.rep.id, auto=False, to_customer=True,
            attachments=files,
        ), self.policy, status="held" if held else "queued")
        if row.interaction_id is None:
            raise RuntimeError("a mail to the customer was queued without its interaction")
        self._apply(session, desk, issue, session.get_one(Interaction, row.interaction_id))
        state = "is held until you answer #send to this issue's reply address" if held else "is on its way"
        words = f"\n\nWords to check:\n\n{report(suspects)}" if suspects else ""
        self._confirm(session, desk, issue, f"Issue #{issue.id} opened for {address}: your mail {state}.{words}")
        return f"new case issue={issue.id}"

    def _expand(self, desk: Desk, issue: Issue, customer: Customer) -> str:
        variables = {"customer_name": customer.name, "issue_id": str(issue.id), "rep_name": desk.rep.name}
        expanded = expand(desk.body, self.canned, variables)
        if expanded.unknown:
            raise Refused(f"Unknown canned response(s): {', '.join(expanded.unknown)}. "
                          f"Known: {', '.join(sorted(self.canned)) or 'none'}.")
        return expanded.body.strip()

    # -- a logged contact ----------------------------------------------------------------

    def _log(self, session: Session, desk: Desk) -> str:
        channel = desk.commands["log"].args[0]
        issue = self._given_issue(session, desk)
        if not desk.body:
            raise Refused(f"#log {channel}: write what was said below the commands.")
        if "to" in desk.commands or "customer" in desk.commands:
            customer, address = self._customer(session, desk, None)
        elif issue is not None and issue.customer is not None:
            customer = issue.customer
            address = customer.addresses[0].email if customer.addresses else None
        else:
            raise Refused(f"#log {channel}: say who with #customer ID or ADDRESS, or give #issue N.")
        subject = desk.message.subject.strip() or f"{channel.capitalize()}: {customer.name or address}"
        if issue is None:
            issue = self._open_issue(session, desk, customer, subject)
        else:
            self._wake(issue)
        when = desk.message.date or utcnow()
        interaction = self._record(session, issue, Interaction(
            direction="inbound", channel=channel, mailbox=issue.mailbox, customer_id=customer.id,
            rep_id=desk.rep.id, from_name=customer.name[:200], from_email=address, to=[], cc=[], subject=subject,
            date=when, full_text=desk.body, new_text=desk.body, thread_reason="logged",
        ), desk.message.attachments)
        self._apply(session, desk, issue, interaction)
        self._confirm(session, desk, issue, f"Your {channel} contact with {customer.name or address} is recorded "
                                            f"on issue #{issue.id}; nothing was sent.")
        return f"logged {channel} issue={issue.id}"

    # -- forwarded customer mail ---------------------------------------------------------

    def _forwarded(self, session: Session, desk: Desk, found: list[forwards.Forwarded]) -> str:
        issue = self._given_issue(session, desk)
        recorded, known = [], []
        first: Interaction | None = None
        for fwd in found:
            if fwd.sender is None and "customer" not in desk.commands:
                raise Refused("The forwarded mail names no sender: add #customer ADDRESS (or ID).")
            customer, _ = self._customer(session, desk, fwd.sender)
            already = self._recorded_on(session, fwd.message_id)
            if already is not None:
                known.append(f"{fwd.subject or '(no subject)'} is on issue #{already} already")
                continue
            if issue is None:
                issue = self._open_issue(session, desk, customer, fwd.subject.strip() or desk.message.subject)
            else:
                self._wake(issue)
            sender = fwd.sender or Address(customer.name, customer.addresses[0].email if customer.addresses else "")
            interaction = self._record(session, issue, Interaction(
                direction="inbound", channel="email", mailbox=issue.mailbox, customer_id=customer.id,
                from_name=sender.name[:200], from_email=sender.email[:320] or None,
                to=[a.email for a in fwd.to], cc=[a.email for a in fwd.cc], subject=fwd.subject,
                date=fwd.date or desk.message.date, message_id=fwd.message_id,
                in_reply_to=fwd.in_reply_to[0][:255] if fwd.in_reply_to else None,
                references=list(fwd.references[-50:]), full_text=fwd.text, new_text=fwd.new_text, html=fwd.html,
                thread_reason="forwarded",
            ), fwd.attachments)
            first = first or interaction
            recorded.append(f"{fwd.subject or '(no subject)'} from {sender.email}")
        if issue is None or first is None:
            raise Refused("Nothing new to record: " + "; ".join(known) + ".")
        if desk.body:  # the rep's own words above the forward: an internal note
            self._record(session, issue, Interaction(
                direction="internal", channel="note", mailbox=issue.mailbox, rep_id=desk.rep.id,
                from_name=desk.rep.name, from_email=desk.rep.email, subject=desk.message.subject,
                date=desk.message.date, full_text=desk.body, new_text=desk.body, thread_reason="forwarded",
            ), ())
        self._apply(session, desk, issue, first)
        lines = "\n".join(f"  {r}" for r in recorded + known)
        self._confirm(session, desk, issue, f"Recorded on issue #{issue.id} as the customer's mail:\n\n{lines}")
        return f"forwarded issue={issue.id} mails={len(recorded)}"

    def _recorded_on(self, session: Session, message_id: str | None) -> int | None:
        if not message_id:
            return None
        return session.scalar(select(Action.issue_id).join(Interaction, Interaction.id == Action.interaction_id)
                              .where(Interaction.message_id == message_id).limit(1))

    # -- questions: the queue and an issue's history --------------------------------------

    def _queue(self, session: Session, desk: Desk) -> str:
        cmd = desk.commands["queue"]
        which = cmd.args[0].lower() if cmd.args else "open"
        found = casefile.queue(session, desk.rep, which, utcnow())
        if isinstance(found, str):
            raise Refused(found)
        rows, more = found
        see = casefile.desk_address(self.settings, self.signer, desk.rep.id) or ""
        text = casefile.queue_text(rows, more, desk.rep.id, see,
                                   lambda issue: self._reply_address(issue, desk.rep, "reply"))
        self._tell(session, desk, f"Queue ({which}): {len(rows) + more} issue(s)", text)
        return f"queue {which}"

    def _history(self, session: Session, desk: Desk) -> str:
        number = int(desk.commands["history"].args[0])
        issue = session.get(Issue, number)
        if issue is None:
            raise Refused(f"#history: no issue #{number}")
        text, _ = casefile.history(session, issue)
        carried, left = attachments.fit(attachments.of_issue(session, issue.id),
                                        self.settings.outbound.notify_attachments_max)
        text += casefile.history_footer(attachments.listing(left) if left else "",
                                        self._reply_address(issue, desk.rep, "note"))
        enqueue(session, Outgoing(
            kind="history", mailbox=issue.mailbox, to=(desk.rep.email,),
            subject=with_tag(f"History: {issue.subject}", self._tag(issue)), body=text + "\n", issue_id=issue.id,
            rep_id=desk.rep.id, reply_to=self._reply_address(issue, desk.rep, "reply"),
            in_reply_to=desk.message.message_id, attachments=attachments.load(session, carried),
        ), self.policy)
        return f"history issue={issue.id}"

    # -- records ---------------------------------------------------------------------------

    def _customer(self, session: Session, desk: Desk, sender: Address | None) -> tuple[Customer, str | None]:
        """The customer a desk mail names (or the forwarded sender), matched or created as any
        sender is, and the address to write to."""
        cmd = desk.commands.get("to") or desk.commands.get("customer")
        if cmd is not None and cmd.args[0].isdigit():
            found = session.get(Customer, int(cmd.args[0]))
            if found is None:
                raise Refused(f"#customer: no customer {cmd.args[0]}")
            found = live(session, found)
            return found, found.addresses[0].email if found.addresses else None
        email, name = (cmd.args[0], cmd.args[1] if len(cmd.args) > 1 else "") if cmd else (
            (sender.email, sender.name) if sender else ("", ""))
        if not email:
            raise Refused("Say who the customer is: #customer ADDRESS (or ID).")
        key = self.rules.key(email)
        if key in self.settings.own_addresses or email.lower() in self.settings.own_addresses:
            raise Refused(f"{email} is one of our own mailbox addresses, not a customer's.")
        reps = session.scalars(select(Rep)).all()
        if any(email.lower() in (r.email.lower(), *(a.lower() for a in r.aliases)) for r in reps):
            raise Refused(f"{email} is a rep's address, not a customer's.")
        customer = owner(session, key)
        if customer is None:
            customer = Customer(name=name[:200], tags=[], created_at=utcnow())
            customer.addresses.append(CustomerAddress(email=email[:320], key=key[:320], created_at=utcnow()))
            session.add(customer)
            session.flush()
        return customer, email

    def _given_issue(self, session: Session, desk: Desk) -> Issue | None:
        cmd = desk.commands.get("issue")
        if cmd is None:
            return None
        issue = session.get(Issue, int(cmd.args[0]))
        if issue is None:
            raise Refused(f"#issue: no issue #{cmd.args[0]}")
        if issue.merged_into_id is not None:
            raise Refused(f"#issue: issue #{issue.id} was merged into #{issue.merged_into_id}; give that one")
        return issue

    def _open_issue(self, session: Session, desk: Desk, customer: Customer, subject: str) -> Issue:
        """A new issue in the mailbox's category, held by the rep who opened it."""
        mailbox = self.settings.mailbox_named(desk.mailbox)
        category = session.scalar(select(Category.id).where(Category.name == mailbox.category))
        now = utcnow()
        issue = Issue(mailbox=desk.mailbox, subject=subject[:1000], category_id=category, customer_id=customer.id,
                      cc=[], tags=[], status="open", priority="normal", assignee_id=desk.rep.id, opened_at=now,
                      updated_at=now)
        session.add(issue)
        session.flush()
        return issue

    def _wake(self, issue: Issue) -> None:
        """The customer was in touch: a pending or closed issue is open again."""
        if issue.status != "open":
            issue.status, issue.closed_at, issue.updated_at = "open", None, utcnow()

    def _record(self, session: Session, issue: Issue, interaction: Interaction, parts: tuple[Part, ...]) -> Interaction:
        interaction.created_at = utcnow()
        session.add(interaction)
        session.flush()
        session.add(Action(issue_id=issue.id, interaction_id=interaction.id, created_at=utcnow()))
        for f in self._files(session, parts):
            session.add(Attachment(interaction_id=interaction.id, sha256=f.sha256, filename=f.filename[:255],
                                   content_type=f.content_type[:255], content_id=f.content_id, inline=f.inline,
                                   size=len(f.data)))
        session.flush()
        return interaction

    def _files(self, session: Session, parts: tuple[Part, ...]) -> tuple[OutAttachment, ...]:
        """The mail's files, their content in the blob store (stored once by hash)."""
        for sha, part in {p.sha256: p for p in parts}.items():
            if session.get(Blob, sha) is None:
                session.add(Blob(sha256=sha, size=part.size, data=part.data))
        session.flush()
        return tuple(OutAttachment(p.filename, p.content_type, p.data, p.sha256, p.inline, p.content_id)
                     for p in parts)

    def _apply(self, session: Session, desk: Desk, issue: Issue, interaction: Interaction) -> None:
        holder = issue.assignee_id
        apply_commands(session, issue, desk.rep, interaction, desk.issue_commands, None, self.short_names)
        self.assignments.announce(session, Change(issue, holder, desk.rep))

    # -- mail to the rep -------------------------------------------------------------------

    def _tag(self, issue: Issue) -> str:
        return subject_tag(self.settings.threading.tag_prefix, issue.id)

    def _reply_address(self, issue: Issue, rep: Rep, purpose: str) -> str | None:
        if self.signer is None:
            return None
        return self.signer.address(self.settings.mailbox_named(issue.mailbox).address, issue.id, rep.id, purpose)

    def _confirm(self, session: Session, desk: Desk, issue: Issue, text: str) -> None:
        """What was done, with the issue's reply and note addresses for the rest of the work."""
        note = self._reply_address(issue, desk.rep, "note")
        footer = ("\n\n-- \nReply to this message to write to the customer on this issue."
                  + (f"\nWrite to {note} to add an internal note instead." if note else ""))
        enqueue(session, Outgoing(
            kind="rep-notice", mailbox=issue.mailbox, to=(desk.rep.email,),
            subject=with_tag(f"Done: {issue.subject}", self._tag(issue)), body=text + footer + "\n",
            issue_id=issue.id, rep_id=desk.rep.id, auto=True, in_reply_to=desk.message.message_id,
            reply_to=self._reply_address(issue, desk.rep, "reply"),
        ), self.policy)

    def _tell(self, session: Session, desk: Desk, subject: str, text: str) -> None:
        enqueue(session, Outgoing(
            kind="rep-notice", mailbox=desk.mailbox, to=(desk.rep.email,), subject=subject, body=text + "\n",
            rep_id=desk.rep.id, auto=True, in_reply_to=desk.message.message_id,
            reply_to=casefile.desk_address(self.settings, self.signer, desk.rep.id),
        ), self.policy)
