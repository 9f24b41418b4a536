"""The named ingest pipeline and the loop that drains the raw message store.

parse -> classify -> identify -> thread -> store -> emit (a rep's mail to their
desk address skips store: the desk's hook handles it). Each stored message
either finishes every stage or goes to quarantine with the stage and the
error: the one broad catch lives here, in the loop, never in a stage. A
database that is down or locked is not the message's fault: such errors leave
the message pending for the next drain instead of quarantining it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import BrokenExecutor, CancelledError, Future
from contextlib import nullcontext
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker

from maild.addresses import AddressRules
from maild.config import Settings
from maild.db import is_transient
from maild.ingest.budget import Budget, Prepared, describe
from maild.ingest.stages.classify import OwnMail
from maild.ingest.stages.identify import IdentifyContext, identify, relayed_classification, sender_key
from maild.ingest.stages.lookup import DbLookup
from maild.ingest.stages.records import Classification, ParsedMessage
from maild.ingest.stages.store import Stored, mark_done, store
from maild.ingest.stages.thread import ThreadContext, parent_ids, prove_rep, thread, unsubscribe_request
from maild.models import RawMessage, Rep, SelftestProbe, table_of, utcnow
from maild.probes import ProbeSigner
from maild.subjects import subject_tag_re
from maild.tokens import TokenSigner

log = logging.getLogger("maild.ingest")

STAGES = ("parse", "classify", "identify", "thread", "store", "emit")

BATCH_BYTES = 64 * 1024 * 1024  # message bytes per batch: two batches are in memory, one parsing, one storing
# Messages per worker task: one round trip for several small messages. A chunk over its
# budget is run again message by message, so a hostile one costs at most two budgets.
CHUNK = 16
CHUNK_BYTES = 1024 * 1024

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


class Ahead:
    """parse and classify results by raw message id, done already or under way in a worker."""

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self._running: dict[int, Future] = {}
        self._done: dict[int, Prepared] = {}
        self._chunks: dict[int, tuple[Future, list[int], list[tuple]]] = {}  # raw id -> its chunk

    def put(self, raw_id: int, future: Future) -> None:
        self._running[raw_id] = future

    def put_chunk(self, raw_ids: list[int], items: list[tuple], future: Future) -> None:
        chunk = (future, raw_ids, items)
        for raw_id in raw_ids:
            self._chunks[raw_id] = chunk

    def _settle_chunk(self, raw_id: int) -> None:
        future, raw_ids, items = self._chunks[raw_id]
        for r in raw_ids:
            del self._chunks[r]
        try:
            results = future.result()
        except (CancelledError, BrokenExecutor):
            raise  # the pool was stopped: the messages stay pending
        except Exception:  # over budget (or lost): each message again, under its own budget
            for r, item in zip(raw_ids, items):
                self._running[r] = self._budget.submit(*item)
            return
        self._done.update(zip(raw_ids, results))

    def get(self, raw_id: int) -> Prepared | None:
        if raw_id in self._chunks:
            self._settle_chunk(raw_id)
        if raw_id in self._running:
            self._done[raw_id] = self._budget.result(self._running.pop(raw_id))
        return self._done.get(raw_id)

    def wait(self) -> None:
        """Until every message is parsed or over its budget (a chunk over budget: its
        messages are run again one by one, at most parse_timeout each)."""
        for raw_id in [*self._chunks, *self._running]:
            self.get(raw_id)

    def __len__(self) -> int:
        return len(self._running) + len(self._done) + len(self._chunks)


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
        probes: ProbeSigner | None = None,
        readers: sessionmaker[Session] | None = None,
    ) -> None:
        self.settings = settings
        self.probes = probes  # recognises the self-test's signed probes
        self.sessions = sessions
        # What is pending, and its bytes, are read without the write lock (SQLite): a
        # read never waits for the intake's stores or a sender's commit.
        self.readers = readers or sessions
        self.hooks = list(hooks)
        own = settings.own_addresses
        self.rules = AddressRules(settings.ingest.fold_plus_addresses, settings.ingest.case_sensitive_local_part)
        self.own = own
        names = frozenset(m.display_name for m in settings.mailbox if m.display_name)
        self.own_mail = OwnMail(addresses=own, message_id_domain=settings.message_id_domain, names=names)
        # The caller's process stores while `workers - 1` others parse (at least one:
        # parsing always runs where an over-budget message can be stopped).
        cfg = settings.ingest
        self.budget = Budget(self.own_mail, cfg.parse_timeout, cfg.parse_memory, workers - 1)
        self.signer = signer
        self.tag_re = subject_tag_re(settings.threading.tag_prefix)
        with sessions() as s:
            reps = {}
            for rep in s.scalars(select(Rep).where(Rep.active.is_(True))):
                for addr in (rep.email, *rep.aliases):
                    reps[addr.lower()] = rep.id
        relays = frozenset(self.rules.key(a) for a in settings.ingest.relay_senders)
        self.identify_ctx = IdentifyContext(self.rules, own, reps, relays)

    def _probe_token(self, lookup: DbLookup, msg: ParsedMessage, value: str) -> str | None:
        """The token of our own self-test probe coming back: signed by us, from our own address,
        and still awaited. Anything else with the header (a copy someone kept, a forgery) is
        ordinary mail: a signature alone never makes a mail disappear."""
        token = self.probes.verify(value) if self.probes is not None else None
        if token is None or msg.from_ is None or msg.from_.email.lower() not in {a.lower() for a in self.own}:
            return None
        awaited = lookup.session.scalar(
            select(SelftestProbe.id).where(SelftestProbe.token == token, SelftestProbe.returned_at.is_(None)))
        return token if awaited is not None else None

    def _settle(self, lookup: DbLookup, raw: Row, msg: ParsedMessage, cls: Classification,
                current: list[str]) -> Stored:
        """identify, thread, store, emit: the stages that need the database."""
        if cls.probe and (token := self._probe_token(lookup, msg, cls.probe)):
            # Our own self-test probe back through the intake: never an issue, only its return recorded.
            current[0] = "emit"
            probe = Stored(raw.id, "probe", raw.mailbox, auto="probe", source=raw.source, probe=token)
            for hook in self.hooks:
                hook(lookup.session, probe)
            return probe
        mailbox = self.settings.mailbox_named(raw.mailbox)
        current[0] = "identify"
        sender = identify(msg, cls, self.identify_ctx, lookup.live_customer_by_key)
        cls = relayed_classification(msg, cls, self.identify_ctx)
        if raw.source != "import":  # archives predate reply tokens: their reps' mail is trusted
            sender = prove_rep(msg, sender, self.signer, self.own, self.rules, lookup.live_customer_by_key)
        current[0] = "thread"
        ctx = ThreadContext(self.signer, self.own, self.tag_re, mailbox.category)
        decision = thread(msg, cls, sender, ctx, lookup)
        cls = unsubscribe_request(decision, cls)
        current[0] = "store"
        if decision.token_purpose == "desk" and sender is not None and not cls.auto:
            # A rep's own mail to their desk address: no issue of its own; the desk's
            # hook reads it (a new case, a logged call, a forward, a question).
            stored = Stored(raw.id, "desk", raw.mailbox, rep_id=sender.rep_id, thread_reason="desk",
                            source=raw.source, token_rep_id=decision.token_rep_id, token_purpose="desk")
        else:
            stored = store(lookup, raw, msg, cls, sender, decision, self.rules, self.own, mailbox.reopen_days)
        current[0] = "emit"
        for hook in self.hooks:
            hook(lookup.session, stored)
        if stored.token_rep_id is not None:
            lookup.forget()  # a rep's mail may carry commands that change issues
        return stored

    def _quarantine(self, session: Session, raw_id: int, stage: str, detail: str) -> Outcome:
        session.execute(update(RawMessage).where(RawMessage.id == raw_id).values(
            state="quarantined", stage=stage, error=detail[:4000], attempts=RawMessage.attempts + 1,
            processed_at=utcnow(),
        ))
        log.warning("quarantined raw=%s stage=%s error=%s", raw_id, stage, detail[:300])
        return Outcome(raw_id, "quarantined", stage=stage, error=detail)

    def prepare_ahead(self, jobs: Iterable[tuple]) -> Ahead:
        """Start parse and classify of (raw id, bytes, envelope recipients[, envelope sender])
        in the workers, each under its budget, so they run while earlier mail is stored."""
        ahead = Ahead(self.budget)
        ids: list[int] = []
        items: list[tuple] = []
        for raw_id, data, envelope_to, *envelope_from in jobs:
            ids.append(raw_id)
            items.append((data, envelope_to, envelope_from[0] if envelope_from else None))
            if len(ids) == CHUNK or sum(len(i[0]) for i in items) >= CHUNK_BYTES:
                ahead.put_chunk(ids, items, self.budget.submit_chunk(items))
                ids, items = [], []
        if ids:
            ahead.put_chunk(ids, items, self.budget.submit_chunk(items))
        return ahead

    def prepare_pending(self, raw_ids: Iterable[int]) -> Ahead:
        """prepare_ahead for stored messages, read from the database (those still pending)."""
        with self.readers() as session:
            rows = self._pending(session, list(raw_ids), data=True)
            return self.prepare_ahead((r.id, r.data, tuple(r.envelope_to or ()), r.envelope_from) for r in rows)

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
            ahead = self.prepare_pending(raw_ids)
        ahead.wait()
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
        t = table_of(RawMessage)
        columns = [t.c.id, t.c.mailbox, t.c.source, t.c.envelope_to, t.c.envelope_from] + ([t.c.data] if data else [])
        q = select(*columns).where(t.c.id.in_(raw_ids), t.c.state == "pending").order_by(t.c.id)
        return list(session.connection().execute(q.with_for_update(skip_locked=True)))

    def _prepare_here(self, session: Session, raw: Row) -> Prepared:
        """A row that turned pending after its batch was read (a retry) is parsed here."""
        data = session.connection().scalar(select(RawMessage.data).where(RawMessage.id == raw.id))
        if data is None:
            return Prepared(None, None, "parse", "the stored message has no bytes")
        return self.budget.prepare(data, tuple(raw.envelope_to or ()), raw.envelope_from)

    def _prefetch(self, lookup: DbLookup, preps: list[Prepared]) -> None:
        keys: list[str] = []
        mids: list[str] = []
        for p in preps:
            if p.msg is not None and p.cls is not None:
                if (key := sender_key(p.msg, self.identify_ctx)) is not None:
                    keys.append(key)
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
                if prep.msg is None or prep.cls is None:
                    detail = prep.error or "parse gave no result"
                    outcomes.append(self._quarantine(session, raw.id, prep.stage or "parse", detail))
                    continue
                current = ["identify"]
                try:
                    with session.begin_nested() if isolate else nullcontext():
                        stored = self._settle(lookup, raw, prep.msg, prep.cls, current)
                    outcomes.append(Outcome(raw.id, "done", stored))
                    done.append((raw.id, stored.outcome))
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    if not isolate:
                        raise _Retry() from exc
                    lookup.forget()  # it may remember writes the savepoint undid
                    outcomes.append(self._quarantine(session, raw.id, current[0], describe(exc)))
            if not isolate:
                # Hooks may leave ORM rows unflushed (queued mail): one that fails here is
                # found, and quarantined, by the isolated run, whose savepoints flush each.
                try:
                    session.flush()
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    raise _Retry() from exc
            mark_done(lookup.conn, done)
        return outcomes

    def start(self) -> None:
        """Start the parse workers (else the first message starts them)."""
        self.budget.start()

    def warm(self, timeout: float) -> bool:
        """Start the parse workers and wait (at most `timeout` s) until they answer."""
        return self.budget.warm(timeout)

    def close(self) -> None:
        self.budget.close()

    def pending_ids(self, limit: int, after: int = 0, max_bytes: int = BATCH_BYTES) -> list[int]:
        """The oldest pending messages past raw id `after`: at most `limit`, and fewer
        when they add up to more than max_bytes (at least one)."""
        query = (select(RawMessage.id, RawMessage.size).where(RawMessage.state == "pending", RawMessage.id > after)
                 .order_by(RawMessage.id).limit(limit))
        ids: list[int] = []
        held = 0
        with self.readers() as session:
            for raw_id, size in session.execute(query):
                held += size
                if ids and held > max_bytes:
                    break
                ids.append(raw_id)
        return ids

    def drain(self, batch: int = 100) -> DrainReport:
        """Process every pending message (finite: for tests, the CLI and the daemon's worker)."""
        report = DrainReport()
        while True:
            ids = self.pending_ids(batch)
            if not ids:
                return report
            for o in self.process(ids):
                report.counts[o.stored.outcome if o.stored else o.state] += 1
