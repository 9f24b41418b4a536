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
