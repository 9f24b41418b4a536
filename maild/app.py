"""The composition root: settings in, every long-lived part built and wired.

Nothing else in maild reads the config to find its collaborators; the CLI
and the daemon both start here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from maild import db
from maild.config import ConfigError, Settings
from maild.ingest.pipeline import Pipeline
from maild.desk.notify import Notifier
from maild.desk.reminders import Reminders
from maild.desk.selftest import Selftest, record_return
from maild.desk.turnaround import Turnaround, track
from maild.outbound.sender import Sender
from maild.outbound.templates import Templates
from maild.probes import ProbeSigner
from maild.tokens import TokenSigner

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

    def close(self) -> None:
        self.pipeline.close()
        self.engine.dispose()


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
    pipeline = Pipeline(settings, sessions, signer, hooks=[notifier, record_return], workers=workers, probes=probes)
    sender = Sender(settings, sessions, hooks=notifier)
    turnaround = Turnaround(settings)
    track(sessions, turnaround)  # first responses, pauses and resolutions, as every session flushes
    reminders = Reminders(settings, sessions, signer, templates, turnaround)
    selftest = Selftest(settings, sessions, probes, templates)
    return App(settings, engine, sessions, signer, pipeline, templates, notifier, sender, turnaround, reminders,
               selftest)
