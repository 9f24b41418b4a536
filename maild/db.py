"""Database engine, sessions and schema migration (SQLite or PostgreSQL).

The schema is only ever created or changed by Alembic migrations; the config's
reps and categories are mirrored into their tables at start.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from maild import models
from maild.config import Settings

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration. A database already there needs no Alembic at start
# (every `maild ingest` from an MTA is a process start); a test keeps this in
# step with the migration scripts.
SCHEMA_HEADS = frozenset({"0010"})

log = logging.getLogger("maild.db")


def normalise_url(url: str) -> str:
    """postgresql:// means psycopg 3, the driver maild ships with."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def display_url(url: str) -> str:
    """The URL as logs and messages may show it: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show no part of it that could be a secret
        return "(invalid database URL)"


def in_memory(url: str) -> bool:
    """A SQLite database in this process's memory: no other process can open it."""
    u = make_url(url)
    return u.get_backend_name() == "sqlite" and (
        u.database in (None, "", ":memory:") or u.query.get("mode") == "memory" or "mode=memory" in u.database)


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite database on disk; None for another backend or one in memory."""
    if in_memory(url):
        return None
    u = make_url(normalise_url(url))
    return u.database if u.get_backend_name() == "sqlite" else None


def make_engine(url: str, lock_wait: float | None = None, write_first: bool = True) -> Engine:
    """An engine for SQLite or PostgreSQL.

    lock_wait: seconds a statement waits for a lock before it fails (SQLite:
    10 by default; PostgreSQL: no limit unless given). write_first (SQLite):
    every transaction takes the write lock at BEGIN; a reader passes False, and
    under WAL then never waits for a writer.
    """
    url = normalise_url(url)
    if url.startswith("sqlite"):
        wait = 10.0 if lock_wait is None else lock_wait
        engine = create_engine(url, connect_args={"timeout": wait})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            # Take transaction control from the sqlite3 module (so SAVEPOINTs
            # work) and make durability explicit: WAL, a full fsync per commit.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            # IMMEDIATE: take the write lock up front, so a transaction that
            # reads then writes waits for another writer instead of failing.
            # A reader's plain BEGIN still gives it one snapshot for all its queries.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write_first else "BEGIN")

        return engine
    connect_timeout = 10 if lock_wait is None else max(2, round(lock_wait))
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                           connect_args={"connect_timeout": connect_timeout})
    if lock_wait is not None:

        @event.listens_for(engine, "connect")
        def _lock_timeout(dbapi_conn, _record):
            with dbapi_conn.cursor() as cur:
                cur.execute(f"SET lock_timeout = {int(lock_wait * 1000)}")
            dbapi_conn.commit()

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def schema_heads(engine: Engine) -> frozenset[str]:
    """The migrations the database is at; empty for a new database."""
    try:
        with engine.connect() as conn:
            return frozenset(conn.scalars(text("SELECT version_num FROM alembic_version")))
    except DBAPIError:  # no such table yet; a database that is down fails again in the upgrade
        return frozenset()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration."""
    if schema_heads(engine) == SCHEMA_HEADS:
        return
    from alembic import command  # only when there is something to do: a slow import
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    before = schema_heads(engine)
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            # A migration that rebuilds a table (SQLite's ALTER) drops the old one:
            # with foreign keys on, any row pointing at it fails the drop. Off for
            # the migration (a PRAGMA outside the transaction), checked after it.
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "heads")
                if sqlite and (broken := conn.exec_driver_sql("PRAGMA foreign_key_check").all()):
                    raise RuntimeError(f"migration left rows pointing nowhere: {broken[:5]}")
        finally:
            if sqlite:
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
    log.info("database %s: schema migrated from %s to %s", display_url(str(engine.url)),
             ",".join(sorted(before)) or "nothing", ",".join(sorted(SCHEMA_HEADS)))


def sync_config(session: Session, settings: Settings) -> None:
    """Mirror configured reps and categories into the database."""
    wanted = {"uncategorized": ""} | {c.name: c.description for c in settings.category}
    have = {c.name: c for c in session.scalars(select(models.Category))}
    for name, description in wanted.items():
        if name in have:
            have[name].description = description
        else:
            session.add(models.Category(name=name, description=description))
    reps = {r.email.lower(): r for r in session.scalars(select(models.Rep))}
    for rc in settings.rep:
        rep = reps.pop(rc.email.lower(), None)
        if rep is None:
            rep = models.Rep(email=rc.email.lower(), name=rc.name)
            session.add(rep)
        rep.name, rep.aliases, rep.active = rc.name, [a.lower() for a in rc.aliases], True
    for gone in reps.values():
        gone.active = False
    session.commit()


def unavailable(exc: BaseException) -> bool:
    """The database is locked, down or unreachable: the command may work later.

    Narrower than is_transient: a file the command could not read is no
    reason to blame the database.
    """
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def first_line(exc: BaseException) -> str:
    """The driver's own message, one line, without SQLAlchemy's statement dump."""
    orig = getattr(exc, "orig", None) or exc
    text = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    return text[:300]


def is_transient(exc: BaseException) -> bool:
    """Errors after which the same work may succeed later (locked, unreachable)."""
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OSError)
