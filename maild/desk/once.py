"""Insert a row unless its key is taken: the guard that makes a notice go once.

Reminders, escalations and self-test alerts each insert their unique row in
the transaction that queues the mail; whoever inserts it sends, and anyone
else (a second daemon, a restart, a concurrent `maild sla check`) finds the
key taken and sends nothing. PostgreSQL makes a concurrent inserter wait for
the first one's commit; SQLite has one writer at a time.
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_once(session: Session, table: Table, values: dict, key: list[str]) -> bool:
    """True when this call inserted the row; False when a row with the same key exists."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table).values(**values).on_conflict_do_nothing(index_elements=key).returning(table.c[key[0]])
    # RETURNING, not rowcount: the drivers report -1 for an insert that returns rows.
    return session.execute(statement).first() is not None
