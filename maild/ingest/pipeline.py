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
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from collections.abc import Callable, Iterable

from sqlalchemy import select
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker

from maild.addresses import AddressRules
from maild.config import Settings
from maild.db import is_transient
from maild.models import RawMessage, Rep, utcnow
from maild.tokens import TokenSigner
from maild.ingest.stages.classify import OwnMail, classify
from maild.ingest.stages.identify import IdentifyContext, identify, relayed_classification, sender_key
from maild.ingest.stages.lookup import DbLookup
from maild.ingest.stages.parse import parse
from maild.ingest.stages.records import Classification, ParsedMessage
from maild.ingest.stages.store import Stored, mark_done, store
from maild.ingest.stages.thread import ThreadContext, parent_ids, prove_rep, thread
from maild.subjects import subject_tag_re

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
    except Exception as exc:
        return Prepared(None, None, stage, describe(exc))
    # The MIME tree stays behind: later stages need only the parsed record.
    return Prepared(replace(msg, message=None), cls)


def _prepare_many(jobs: list[tuple[bytes, tuple[str, ...]]], own: OwnMail) -> list[Prepared]:
    return [prepare(data, envelope_to, own) for data, envelope_to in jobs]


class Ahead:
    """parse and classify results by raw message id, computed already or under way in workers."""

    def __init__(self) -> None:
        self._done: dict[int, Prepared] = {}
        self._running: dict[int, tuple[Future, int]] = {}

    def put(self, raw_id: int, prep: Prepared) -> None:
        self._done[raw_id] = prep

    def put_future(self, raw_id: int, future: Future, index: int) -> None:
        self._running[raw_id] = (future, index)

    def get(self, raw_id: int) -> Prepared | None:
        if raw_id not in self._done and raw_id in self._running:
            future, index = self._running.pop(raw_id)
            self._done[raw_id] = future.result()[index]
        return self._done.get(raw_id)


_CHUNK = 25  # messages per task handed to a worker process


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

    def _settle(self, lookup: DbLookup, raw: Row, prep: Prepared, current: list[str]) -> Stored:
        """identify, thread, store, emit: the stages that need the database."""
        mailbox = self.settings.mailbox_named(raw.mailbox)
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
        stored = store(lookup, raw, msg, cls, sender, decision, self.rules, self.own, mailbox.reopen_days)
        current[0] = "emit"
        for hook in self.hooks:
            hook(lookup.session, stored)
        if stored.token_rep_id is not None:
            lookup.forget()  # a rep's mail may carry commands that change issues
        return stored

    def _quarantine(self, session: Session, raw_id: int, stage: str, detail: str) -> Outcome:
        raw = session.get(RawMessage, raw_id)
        raw.state, raw.stage, raw.error = "quarantined", stage, detail[:4000]
        raw.attempts = (raw.attempts or 0) + 1
        raw.processed_at = utcnow()
        log.warning("quarantined raw=%s stage=%s error=%s", raw_id, stage, detail[:300])
        return Outcome(raw_id, "quarantined", stage=stage, error=detail)

    def prepare_ahead(self, jobs: Iterable[tuple[int, bytes, tuple[str, ...]]]) -> Ahead:
        """Start parse and classify of (raw id, bytes, envelope recipients): in worker
        processes when there are several, so they run while earlier mail is stored."""
        ahead, jobs = Ahead(), list(jobs)
        if self.workers <= 1:
            for raw_id, data, envelope_to in jobs:
                ahead.put(raw_id, prepare(data, envelope_to, self.own_mail))
            return ahead
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers - 1, mp_context=get_context("fork"))
        for i in range(0, len(jobs), _CHUNK):
            chunk = jobs[i : i + _CHUNK]
            future = self._executor.submit(_prepare_many, [(d, e) for _, d, e in chunk], self.own_mail)
            for index, (raw_id, _, _) in enumerate(chunk):
                ahead.put_future(raw_id, future, index)
        return ahead

    def process(self, raw_ids: Iterable[int], ahead: Ahead | None = None) -> list[Outcome]:
        """Run pending messages through the stages, one transaction for the batch.

        `ahead` holds their parse results when the caller started them early.
        The batch runs without per-message savepoints; if a stage fails, the
        whole batch is rolled back and run again with a savepoint per message,
        so the failing one goes to quarantine and the others are stored.
        """
        raw_ids = list(raw_ids)
        if ahead is None:
            # Parse and classify before the write transaction, so the database
            # is locked only for the stages that need it.
            with self.sessions() as session:
                rows = self._pending(session, raw_ids, data=True)
                ahead = self.prepare_ahead((r.id, r.data, tuple(r.envelope_to or ())) for r in rows)
        try:
            outcomes = self._process(raw_ids, ahead, isolate=False)
        except _Retry:
            outcomes = self._process(raw_ids, ahead, isolate=True)
        for o in outcomes:
            if o.stored:
                s = o.stored
                log.info(
                    "processed raw=%s outcome=%s issue=%s interaction=%s thread=%s new=%s",
                    s.raw_id, s.outcome, s.issue_id, s.interaction_id, s.thread_reason, s.new_issue,
                )
        return outcomes

    def _pending(self, session: Session, raw_ids: list[int], data: bool) -> list[Row]:
        """The still-pending rows among raw_ids (id, mailbox, source, envelope_to, and
        data if asked), locked against another processor (PostgreSQL)."""
        t = RawMessage.__table__
        columns = [t.c.id, t.c.mailbox, t.c.source, t.c.envelope_to] + ([t.c.data] if data else [])
        q = select(*columns).where(t.c.id.in_(raw_ids), t.c.state == "pending").order_by(t.c.id)
        return list(session.connection().execute(q.with_for_update(skip_locked=True)))

    def _prepare_here(self, session: Session, raw: Row) -> Prepared:
        """A row that turned pending after its batch was read (a retry) is parsed here."""
        data = session.connection().scalar(select(RawMessage.data).where(RawMessage.id == raw.id))
        return prepare(data, tuple(raw.envelope_to or ()), self.own_mail)

    def _prefetch(self, lookup: DbLookup, preps: list[Prepared]) -> None:
        keys, mids = [], []
        for p in preps:
            if p.msg is not None:
                keys.append(sender_key(p.msg, self.identify_ctx))
                mids += parent_ids(p.msg, p.cls)
        lookup.prefetch(keys, mids)

    def _process(self, raw_ids: list[int], ahead: Ahead, isolate: bool) -> list[Outcome]:
        outcomes: list[Outcome] = []
        done: list[tuple[int, str]] = []
        with self.sessions() as session, session.begin():
            raws = self._pending(session, raw_ids, data=False)
            preps = [ahead.get(r.id) or self._prepare_here(session, r) for r in raws]
            lookup = DbLookup(session)
            self._prefetch(lookup, preps)
            for raw, prep in zip(raws, preps):
                if prep.error is not None:
                    outcomes.append(self._quarantine(session, raw.id, prep.stage, prep.error))
                    continue
                current = ["identify"]
                try:
                    with session.begin_nested() if isolate else nullcontext():
                        stored = self._settle(lookup, raw, prep, current)
                    outcomes.append(Outcome(raw.id, "done", stored))
                    done.append((raw.id, stored.outcome))
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    if not isolate:
                        raise _Retry() from exc
                    lookup.forget()  # it may remember writes the savepoint undid
                    outcomes.append(self._quarantine(session, raw.id, current[0], describe(exc)))
            mark_done(lookup.conn, done)
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
