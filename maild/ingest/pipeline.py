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
from contextlib import nullcontext
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from typing import Callable, Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker, undefer

from ..addresses import AddressRules
from ..config import Settings
from ..db import is_transient
from ..models import RawMessage, Rep, utcnow
from ..outbound.tokens import TokenSigner
from .classify import OwnMail, classify
from .identify import IdentifyContext, identify, relayed_classification
from .lookup import DbLookup
from .parse import parse
from .records import Classification, ParsedMessage
from .store import Stored, store
from .thread import ThreadContext, prove_rep, subject_tag_re, thread

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


@dataclass(frozen=True)
class Prepared:
    """What the pure stages made of a message, or where and why they failed."""

    msg: ParsedMessage | None
    cls: Classification | None
    stage: str | None = None
    error: str | None = None


def describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def prepare(data: bytes, envelope_to: tuple[str, ...], own: OwnMail) -> Prepared:
    """parse, then classify. Pure, so it may run in a worker process; the
    failure is caught here only to carry it back across that boundary."""
    stage = "parse"
    try:
        msg = parse(data, envelope_to)
        stage = "classify"
        cls = classify(msg.message, msg.from_.email if msg.from_ else None, own)
    except Exception as exc:  # noqa: BLE001 - the loop's catch, on the worker's side
        return Prepared(None, None, stage, describe(exc))
    # The MIME tree stays behind: later stages need only the parsed record.
    return Prepared(replace(msg, message=None), cls)


class _Retry(Exception):
    """A stage failed in a batch run without savepoints: run it again, isolated."""


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        signer: TokenSigner | None,
        hooks: Iterable[Hook] = (),
        workers: int = 1,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
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
        relays = frozenset(self.rules.key(a) for a in settings.ingest.relay_senders)
        self.identify_ctx = IdentifyContext(self.rules, own, reps, relays)

    def _settle(self, session: Session, raw: RawMessage, prep: Prepared, current: list[str]) -> Stored:
        """identify, thread, store, emit: the stages that need the database."""
        mailbox = self.settings.mailbox_named(raw.mailbox)
        lookup = DbLookup(session)
        msg, cls = prep.msg, prep.cls
        current[0] = "identify"
        sender = identify(msg, cls, self.identify_ctx, lookup.live_customer_by_key)
        cls = relayed_classification(msg, cls, self.identify_ctx)
        if raw.source != "import":  # archives predate reply tokens: their reps' mail is trusted
            sender = prove_rep(msg, sender, self.signer, self.own, self.rules, lookup.live_customer_by_key)
        current[0] = "thread"
        ctx = ThreadContext(self.signer, self.own, self.tag_re, mailbox.category)
        decision = thread(msg, cls, sender, ctx, lookup)
        current[0] = "store"
        stored = store(session, raw, msg, cls, sender, decision, self.rules, self.own, mailbox.reopen_days)
        current[0] = "emit"
        for hook in self.hooks:
            hook(session, stored)
        return stored

    def _quarantine(self, session: Session, raw_id: int, stage: str, detail: str) -> Outcome:
        raw = session.get(RawMessage, raw_id)
        raw.state, raw.stage, raw.error = "quarantined", stage, detail[:4000]
        raw.attempts = (raw.attempts or 0) + 1
        raw.processed_at = utcnow()
        log.warning("quarantined raw=%s stage=%s error=%s", raw_id, stage, detail[:300])
        return Outcome(raw_id, "quarantined", stage=stage, error=detail)

    def _prepared(self, raws: list[RawMessage]) -> Iterator[Prepared]:
        """parse and classify every message, in worker processes when there are several."""
        args = [(r.data, tuple(r.envelope_to or ()), self.own_mail) for r in raws]
        if self.workers > 1 and len(raws) > 1:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(self.workers - 1, mp_context=get_context("fork"))
            return self._executor.map(prepare, *zip(*args), chunksize=8)
        return (prepare(*a) for a in args)

    def process(self, raw_ids: Iterable[int]) -> list[Outcome]:
        """Run pending messages through the stages, one transaction for the batch.

        The batch runs without per-message savepoints; if a stage fails, the
        whole batch is rolled back and run again with a savepoint per message,
        so the failing one goes to quarantine and the others are stored.
        """
        raw_ids = list(raw_ids)
        try:
            outcomes = self._process(raw_ids, isolate=False)
        except _Retry:
            outcomes = self._process(raw_ids, isolate=True)
        for o in outcomes:
            if o.stored:
                s = o.stored
                log.info(
                    "processed raw=%s outcome=%s issue=%s interaction=%s thread=%s new=%s",
                    s.raw_id, s.outcome, s.issue_id, s.interaction_id, s.thread_reason, s.new_issue,
                )
        return outcomes

    def _pending(self, session: Session, raw_ids: list[int], data: bool) -> list[RawMessage]:
        """The still-pending rows among raw_ids, locked against another processor (PostgreSQL)."""
        q = select(RawMessage).where(RawMessage.id.in_(raw_ids), RawMessage.state == "pending").order_by(RawMessage.id)
        if data:
            q = q.options(undefer(RawMessage.data))
        return list(session.scalars(q.with_for_update(skip_locked=True)))

    def _process(self, raw_ids: list[int], isolate: bool) -> list[Outcome]:
        outcomes: list[Outcome] = []
        prepared: dict[int, Prepared] | None = None
        if self.workers <= 1:
            # Parse and classify before the write transaction, so the database
            # is locked only for the stages that need it.
            with self.sessions() as session:
                raws = self._pending(session, raw_ids, data=True)
                prepared = {r.id: p for r, p in zip(raws, self._prepared(raws))}
        with self.sessions() as session, session.begin():
            raws = self._pending(session, raw_ids, data=prepared is None)
            preps = (prepared[r.id] if r.id in prepared else prepare(r.data, tuple(r.envelope_to or ()), self.own_mail)
                     for r in raws) if prepared is not None else self._prepared(raws)
            for raw, prep in zip(raws, preps):
                if prep.error is not None:
                    outcomes.append(self._quarantine(session, raw.id, prep.stage, prep.error))
                    continue
                current = ["identify"]
                try:
                    with session.begin_nested() if isolate else nullcontext():
                        stored = self._settle(session, raw, prep, current)
                    outcomes.append(Outcome(raw.id, "done", stored))
                except Exception as exc:  # noqa: BLE001 - the one broad catch
                    if is_transient(exc):
                        raise
                    if not isolate:
                        raise _Retry() from exc
                    outcomes.append(self._quarantine(session, raw.id, current[0], describe(exc)))
        return outcomes

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

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
