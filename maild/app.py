"""The composition root: settings in, every long-lived part built and wired.

Nothing else in maild reads the config to find its collaborators; the CLI
and the daemon both start here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from maild import db
from maild.config import ConfigError, Settings
from maild.ingest.pipeline import Pipeline
from maild.desk.notify import Notifier
from maild.desk.reminders import Reminders
from maild.desk.selftest import Selftest, record_return
from maild.desk.turnaround import Turnaround, track
from maild.outbound.outbox import wake_on_queued
from maild.outbound.sender import Sender
from maild.outbound.templates import Templates
from maild.probes import ProbeSigner
from maild.tokens import TokenSigner
from maild.writegate import WriterTurn

log = logging.getLogger("maild")


@dataclass
class App:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    signer: TokenSigner | None
    pipeline: Pipeline
    templates: Templates
    notifier: Notifier
    sender: Sender
    turnaround: Turnaround
    reminders: Reminders
    selftest: Selftest
    readers: Engine | None = None  # SQLite: reads that never take the write lock
    turn: WriterTurn | None = None  # SQLite file: the sender's turn at the write lock beside a daemon

    def close(self) -> None:
        self.pipeline.close()
        self.engine.dispose()
        if self.readers is not None:
            self.readers.dispose()
        if self.turn is not None:
            self.turn.close()


def make_signer(settings: Settings, required: bool = False) -> TokenSigner | None:
    """The token signer, or None (with a warning) when the secret is not set."""
    if not os.environ.get(settings.security.secret_env) and not required:
        log.info("%s is not set: reply tokens are neither issued nor honoured", settings.security.secret_env)
        return None
    try:
        return TokenSigner(settings.secret())
    except ConfigError:
        if required:
            raise
        log.warning("%s is too short: reply tokens are disabled", settings.security.secret_env)
        return None


def build(settings: Settings, *, secret_required: bool = False, workers: int = 1) -> App:
    """Everything wired; workers > 1 parses batches in that many processes."""
    engine = db.make_engine(settings.database.url)
    db.migrate(engine)
    sessions = db.session_factory(engine)
    with sessions() as session:
        db.sync_config(session, settings)
    signer = make_signer(settings, secret_required)
    templates = Templates(settings.templates_dir)
    notifier = Notifier(settings, signer, templates)
    probes = ProbeSigner(settings.secret()) if signer is not None else None
    file_db = engine.dialect.name == "sqlite" and not db.in_memory(settings.database.url)
    readers = db.make_engine(settings.database.url, write_first=False) if file_db else None
    pipeline = Pipeline(settings, sessions, signer, hooks=[notifier, record_return], workers=workers, probes=probes,
                        readers=db.session_factory(readers) if readers is not None else None)
    sender = Sender(settings, sessions, hooks=notifier)
    turn = _take_turns(sender, settings)  # `maild outbox send` beside a daemon gets its turn too
    turnaround = Turnaround(settings)
    track(sessions, turnaround)  # first responses, pauses and resolutions, as every session flushes
    reminders = Reminders(settings, sessions, signer, templates, turnaround)
    selftest = Selftest(settings, sessions, probes, templates)
    return App(settings, engine, sessions, signer, pipeline, templates, notifier, sender, turnaround, reminders,
               selftest, readers, turn)


def build_sender(settings: Settings, wake: Any = None) -> Sender:
    """Only what sending needs, for a sender in a process of its own (maild/sendproc.py).

    The database is migrated and the config synced already (by the daemon that
    started it). `wake`, an event shared with the daemon, replaces the sender's own.
    """
    engine = db.make_engine(settings.database.url)
    sessions = db.session_factory(engine)
    signer = make_signer(settings)
    notifier = Notifier(settings, signer, Templates(settings.templates_dir))
    track(sessions, Turnaround(settings))  # failure notices recorded as the daemon's are
    sender = Sender(settings, sessions, hooks=notifier)
    _take_turns(sender, settings)
    if wake is not None:
        sender.wake = wake
    wake_on_queued(sessions, sender.wake.set)  # a failure notice queued here leaves at once too
    return sender


def _take_turns(sender: Sender, settings: Settings) -> WriterTurn | None:
    """On a SQLite file, the sender asks for its turn at the write lock and a daemon's writers
    let it in (writegate.WriterTurn): no seconds of polling while they write under a burst."""
    turn = WriterTurn.beside(db.sqlite_file(settings.database.url))
    if turn is not None:
        sender.turn = turn.asking
    return turn
