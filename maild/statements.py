"""Hot-path inserts, compiled once per dialect and run as the driver's own SQL.

A Core insert costs more per call in SQLAlchemy (cache key, parameter
processing, result set-up) than in SQLite itself, and the store stage and the
notifier run a few per message. Here each insert is compiled once per dialect
and column set; a call applies the columns' own bind processors (the same JSON
and date formats as Core) and runs the SQL through `exec_driver_sql`, which
keeps SQLAlchemy's error translation and connection handling. Nothing here
decides what is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CTE, BindParameter, Table, bindparam, insert
from sqlalchemy.engine import Connection, Dialect


@dataclass(frozen=True)
class _Compiled:
    sql: str
    params: tuple[tuple[str, Callable[[Any], Any] | None], ...]  # (column key, bind processor), in order
    positional: bool
    returning: bool  # the new id comes back as a row, not as the cursor's lastrowid


class Insert:
    """INSERT INTO table (the given columns), returning the new row's id when asked."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._compiled: dict[tuple[str, tuple[str, ...], bool], _Compiled] = {}

    def _compile(self, dialect: Dialect, keys: tuple[str, ...], with_id: bool) -> _Compiled:
        cache_key = (dialect.name, keys, with_id)
        found = self._compiled.get(cache_key)
        if found is not None:
            return found
        returning = with_id and dialect.name != "sqlite"
        statement = insert(self.table)
        if returning:
            statement = statement.returning(self.table.c.id)
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        names = list(compiled.positiontup or ()) if dialect.positional else list(compiled.binds)
        extra = set(names) - set(keys)
        if extra:  # a column default Core would have filled in: the caller must give it
            raise ValueError(f"insert into {self.table.name}: no value for {sorted(extra)}")
        params = tuple(
            (name, self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names
        )
        found = _Compiled(compiled.string, params, dialect.positional, returning)
        self._compiled[cache_key] = found
        return found

    @staticmethod
    def _values(compiled: _Compiled, row: dict[str, Any]) -> tuple | dict:
        values = [(name, row[name] if process is None else process(row[name])) for name, process in compiled.params]
        return tuple(v for _, v in values) if compiled.positional else dict(values)

    def one(self, conn: Connection, row: dict[str, Any]) -> int:
        """Insert one row; its id."""
        compiled = self._compile(conn.dialect, tuple(row), True)
        result = conn.exec_driver_sql(compiled.sql, self._values(compiled, row))
        new_id = result.scalar() if compiled.returning else result.lastrowid
        if new_id is None:
            raise RuntimeError(f"the insert into {self.table.name} returned no primary key")
        return int(new_id)

    def many(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows that all give the same columns (one executemany)."""
        if not rows:
            return
        compiled = self._compile(conn.dialect, tuple(rows[0]), False)
        conn.exec_driver_sql(compiled.sql, [self._values(compiled, row) for row in rows])


def param(table: Table, key: str, prefix: str = "") -> BindParameter:
    """A parameter named prefix + column, typed as the column (JSON and dates bind as in Core)."""
    return bindparam(f"{prefix}{key}", type_=table.c[key].type)


def inserted(table: Table, keys: Iterable[str], prefix: str, name: str) -> CTE:
    """PostgreSQL: a one-row INSERT (parameters prefix + column) returning its id, as the CTE
    `name`, for statements that write linked rows in one round trip."""
    return insert(table).values({k: param(table, k, prefix) for k in keys}).returning(table.c.id).cte(name)
