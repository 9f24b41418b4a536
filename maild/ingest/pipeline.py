"""The named ingest pipeline and the loop that drains the raw message store.

parse -> classify -> identify -> thread -> store -> emit. Each stored message
either finishes every stage or goes to quarantine with the stage and the
error: the one broad catch lives here, in the loop, never in a stage. A
database that is down or locked is not the message's fault: such errors leave
the message pending for the next drain instead of quarantining it.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker, undefer

from ..addresses import AddressRules
from ..config import Settings
from ..db import is_transient
from ..models import RawMessage, Rep, utcnow
from ..outbound.tokens import TokenSigner
from .classify import OwnMail, classify
from .identify import IdentifyContext, identify
from .lookup import DbLookup
from .parse import parse
from .store import Stored, store
from .thread import ThreadContext, subject_tag_re, thread

log = logging.getLogger("maild.ingest")

STAGES = ("parse", "classify", "identify", "thread", "store", "emit")

# A hook sees each stored message inside its transaction (outbox rows written
# there commit together with the interaction).
Hook = Callable[[Session, Stored], None]


@dataclass
class Outcome:
    raw_id: int
    state: str  # done, quarantined
    stored: Stored | None = None
    stage: str | None = None
    error: str | None = None


@dataclass
class DrainReport:
    counts: Counter = field(default_factory=Counter)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        signer: TokenSigner | None,
        hooks: Iterable[Hook] = (),
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.hooks = list(hooks)
        own = settings.own_addresses
        self.rules = AddressRules(settings.ingest.fold_plus_addresses, settings.ingest.case_sensitive_local_part)
        self.own = own
        self.own_mail = OwnMail(addresses=own, message_id_domain=settings.message_id_domain)
        self.signer = signer
        self.tag_re = subject_tag_re(settings.threading.tag_prefix)
        with sessions() as s:
            reps = {}
            for rep in s.scalars(select(Rep).where(Rep.active.is_(True))):
                for addr in (rep.email, *rep.aliases):
                    reps[addr.lower()] = rep.id
        self.identify_ctx = IdentifyContext(self.rules, own, reps)

    def _stages(self, session: Session, raw: RawMessage, current: list[str]) -> Stored:
        mailbox = self.settings.mailbox_named(raw.mailbox)
        lookup = DbLookup(session)
        current[0] = "parse"
        msg = parse(raw.data, tuple(raw.envelope_to or ()))
        current[0] = "classify"
        sender_addr = msg.from_.email if msg.from_ else None
        cls = classify(msg.message, sender_addr, self.own_mail)
        current[0] = "identify"
        sender = identify(msg, cls, self.identify_ctx, lookup.customer_by_key)
        current[0] = "thread"
        ctx = ThreadContext(self.signer, self.own, self.tag_re, mailbox.category)
        decision = thread(msg, cls, sender, ctx, lookup)
        current[0] = "store"
        stored = store(session, raw, msg, cls, sender, decision, self.rules, self.own)
        current[0] = "emit"
        for hook in self.hooks:
            hook(session, stored)
        return stored

    def _quarantine(self, session: Session, raw_id: int, stage: str, exc: BaseException) -> Outcome:
        raw = session.get(RawMessage, raw_id)
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        raw.state, raw.stage, raw.error = "quarantined", stage, detail[:4000]
        raw.attempts = (raw.attempts or 0) + 1
        raw.processed_at = utcnow()
        log.warning("quarantined raw=%s stage=%s error=%s", raw_id, stage, detail[:300])
        return Outcome(raw_id, "quarantined", stage=stage, error=detail)

    def process(self, raw_ids: Iterable[int]) -> list[Outcome]:
        """Run pending messages through the stages in one transaction, a savepoint each."""
        outcomes: list[Outcome] = []
        with self.sessions() as session, session.begin():
            raws = session.scalars(
                select(RawMessage)
                .options(undefer(RawMessage.data))
                .where(RawMessage.id.in_(list(raw_ids)), RawMessage.state == "pending")
                .order_by(RawMessage.id)
            ).all()
            for raw in raws:
                current = ["parse"]
                try:
                    with session.begin_nested():
                        stored = self._stages(session, raw, current)
                    outcomes.append(Outcome(raw.id, "done", stored))
                except Exception as exc:  # noqa: BLE001 - the one broad catch
                    if is_transient(exc):
                        raise
                    outcomes.append(self._quarantine(session, raw.id, current[0], exc))
        for o in outcomes:
            if o.stored:
                s = o.stored
                log.info(
                    "processed raw=%s outcome=%s issue=%s interaction=%s thread=%s new=%s",
                    s.raw_id, s.outcome, s.issue_id, s.interaction_id, s.thread_reason, s.new_issue,
                )
        return outcomes

    def pending_ids(self, limit: int) -> list[int]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(RawMessage.id).where(RawMessage.state == "pending").order_by(RawMessage.id).limit(limit)
                )
            )

    def drain(self, batch: int = 100) -> DrainReport:
        """Process every pending message (finite: for tests, the CLI and the daemon's worker)."""
        report = DrainReport()
        while True:
            ids = self.pending_ids(batch)
            if not ids:
                return report
            for o in self.process(ids):
                report.counts[o.stored.outcome if o.stored else o.state] += 1
