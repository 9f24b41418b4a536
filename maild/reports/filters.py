"""Report filters: which slice of the helpdesk a report looks at.

One frozen value shared by the CLI, the console (as URL query parameters) and
the digest, so a report means the same thing wherever it is asked for. It only
describes the slice; the SQL that applies it lives beside each report.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import date, datetime, time, timedelta, UTC

# A report over no date range covers this many days up to now.
DEFAULT_DAYS = 30
# The longest range a report accepts (the backlog report has a row per day).
MAX_DAYS = 3700

FILTER_KEYS = ("since", "until", "mailbox", "category", "priority", "rep", "channel")


class FilterError(ValueError):
    """A filter value that cannot be understood; the message names the filter."""


def _parse_when(key: str, value: str) -> date | datetime:
    text = value.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"{key}: {value!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _start_of(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.combine(value, time(), UTC)


@dataclass(frozen=True)
class Window:
    """The half-open time range [start, end) a report covers, in UTC."""

    start: datetime
    end: datetime

    @property
    def previous(self) -> Window:
        """The period of the same length just before this one (for trends)."""
        return Window(self.start - (self.end - self.start), self.start)


@dataclass(frozen=True)
class Filters:
    """since: first day (or instant) included; until: last day included (a
    date) or the instant the range ends (a datetime); both UTC. The other
    fields narrow by mailbox name, category name, priority, rep (email or
    name) and interaction channel. Every field is optional."""

    since: date | datetime | None = None
    until: date | datetime | None = None
    mailbox: str | None = None
    category: str | None = None
    priority: str | None = None
    rep: str | None = None
    channel: str | None = None

    @classmethod
    def from_query(cls, query: dict[str, str]) -> Filters:
        """From URL query parameters or CLI options; empty values and unknown keys are ignored."""
        values: dict[str, object] = {}
        for key in FILTER_KEYS:
            raw = (query.get(key) or "").strip()
            if not raw:
                continue
            values[key] = _parse_when(key, raw) if key in ("since", "until") else raw
        filters = cls(**values)  # type: ignore[arg-type]
        filters.window(datetime.now(UTC))  # validates the range
        return filters

    def as_query(self) -> dict[str, str]:
        """The filters that are set, as strings `from_query` reads back."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value if isinstance(value, str) else value.isoformat()
        return out

    def with_(self, **changes: object) -> Filters:
        return replace(self, **changes)  # type: ignore[arg-type]

    def window(self, now: datetime) -> Window:
        """The [start, end) this report covers: DEFAULT_DAYS up to now unless given."""
        try:
            if self.until is None:
                end = now
            elif isinstance(self.until, datetime):
                end = _start_of(self.until)
            else:
                end = _start_of(self.until + timedelta(days=1))
            start = _start_of(self.since) if self.since is not None else end - timedelta(days=DEFAULT_DAYS)
        except OverflowError:
            raise FilterError("the dates are outside the calendar maild can count in") from None
        if start >= end:
            raise FilterError(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
        if end - start > timedelta(days=MAX_DAYS):
            raise FilterError(f"the date range is longer than {MAX_DAYS} days")
        return Window(start, end)
