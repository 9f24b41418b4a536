"""Schema migration at start: a new database, an older one, one already current."""

from __future__ import annotations

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from maild.db import MIGRATIONS, SCHEMA_HEADS, make_engine, migrate, schema_heads


def _alembic(conn) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def test_the_known_schema_heads_are_the_newest_migrations():
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert frozenset(ScriptDirectory.from_config(cfg).get_heads()) == SCHEMA_HEADS


def test_a_new_database_gets_the_whole_schema(db_url):
    engine = make_engine(db_url)
    assert schema_heads(engine) == frozenset()
    migrate(engine)
    assert schema_heads(engine) == SCHEMA_HEADS
    assert {"issues", "interactions", "raw_messages", "imap_state", "outbox"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_a_database_from_an_older_version_is_upgraded(db_url):
    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(_alembic(conn), "0002")
    assert "outbox" not in inspect(engine).get_table_names()
    migrate(engine)
    assert schema_heads(engine) == SCHEMA_HEADS
    assert "outbox" in inspect(engine).get_table_names()
    migrate(engine)  # already current: nothing to do, nothing fails
    assert schema_heads(engine) == SCHEMA_HEADS
    engine.dispose()


def _insert(conn, table, **values) -> int:
    """A row with these values and a plain value for every other required column."""
    from datetime import UTC, datetime

    from sqlalchemy import JSON, Boolean, DateTime, Integer, LargeBinary, MetaData, Table

    t = Table(table, MetaData(), autoload_with=conn)
    row = dict(values)
    for c in t.columns:
        if c.name in row or c.nullable or c.primary_key or c.server_default is not None:
            continue
        kind = type(c.type)
        row[c.name] = (0 if issubclass(kind, Integer) else False if issubclass(kind, Boolean)
                       else datetime.now(UTC) if issubclass(kind, DateTime) else b"x" if issubclass(kind, LargeBinary)
                       else [] if issubclass(kind, JSON) else "x")
    return conn.execute(t.insert().values(**row)).inserted_primary_key[0]


def test_an_upgrade_keeps_existing_mail_and_its_interactions(db_url):
    """From 0004, with mail stored and processed (interactions point at raw rows), and one
    Message-ID stored under two mailboxes (before 0005 that was two rows): every row and
    interaction survives; the later copy gets a key of its own."""
    from sqlalchemy import text

    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(_alembic(conn), "0004")
    with engine.begin() as conn:
        first = _insert(conn, "raw_messages", mailbox="support", dedupe_key="mid:dup@x", state="done")
        second = _insert(conn, "raw_messages", mailbox="billing", dedupe_key="mid:dup@x", state="done")
        category = _insert(conn, "categories", name="uncategorized")
        issue = _insert(conn, "issues", category_id=category, mailbox="support", status="open")
        for raw in (first, second):
            _insert(conn, "interactions", raw_message_id=raw, mailbox="support", direction="inbound")
        _ = issue
    migrate(engine)
    assert schema_heads(engine) == SCHEMA_HEADS
    with engine.connect() as conn:
        keys = dict(conn.execute(text("SELECT id, dedupe_key FROM raw_messages ORDER BY id")).all())
        linked = conn.execute(text("SELECT raw_message_id FROM interactions ORDER BY id")).scalars().all()
    assert keys == {first: "mid:dup@x", second: f"copy:{second}:mid:dup@x"}
    assert linked == [first, second]
    engine.dispose()
