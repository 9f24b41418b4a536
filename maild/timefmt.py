"""Timestamps as maild prints them: ISO 8601 in UTC."""

from __future__ import annotations

from datetime import datetime, UTC


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands back naive datetimes; maild stores UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def aware(value: datetime) -> datetime:
    """A datetime from the database as UTC-aware (SQLite hands back naive ones)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
