"""The declarative base every maild table is mapped on (maild/models.py, models_backoffice.py),
its naming convention for constraints and indexes, and two helpers the tables share."""

from __future__ import annotations

from datetime import datetime, UTC

from sqlalchemy import JSON, DateTime, MetaData, Table
from sqlalchemy.orm import DeclarativeBase


def utcnow() -> datetime:
    return datetime.now(UTC)


def table_of(model: type[Base]) -> Table:
    """A mapped class's Table, typed as one (for prebuilt Core statements)."""
    return model.__table__  # type: ignore[return-value]


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: DateTime(timezone=True), dict: JSON, list: JSON}
