"""Business time: how many working seconds lie between two moments under a calendar.

Turnaround targets are counted in working hours when a calendar is
configured (working days, spans of hours, holidays, a time zone), and in
plain elapsed time otherwise (24x7). Written here rather than taken from a
library: `businesstime` (last release 2016) and `business-calendar` (2015) are
unmaintained and count only whole days or one span per day; `workalendar`
and `holidays` supply countries' holiday lists but no working-hours
arithmetic. What is needed is small: each working span of each local day is
turned into an aware UTC interval with zoneinfo and intersected with the
question, so a working day keeps its wall-clock hours across a DST change
(an 8-hour day is 8 hours on both sides of it). Pure: no database, no clock.

Work is bounded: a count walks one local day at a time and stops once it has
found `limit` seconds (callers pass their target), and never walks more
than MAX_DAYS days.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from maild.config_desk import DAYS, CalendarConfig, parse_hours

MAX_DAYS = 3700  # about ten years of local days in one count


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Calendar:
    """Working time: `spans` (minutes of the day) on `days` (0 = Monday), except `holidays`, in `zone`."""

    name: str
    zone: ZoneInfo
    days: frozenset[int]
    spans: tuple[tuple[int, int], ...]
    holidays: frozenset[date]

    @classmethod
    def from_config(cls, cfg: CalendarConfig) -> Calendar:
        return cls(cfg.name, ZoneInfo(cfg.time_zone), frozenset(DAYS.index(d) for d in cfg.days),
                   tuple(sorted(parse_hours(h) for h in cfg.hours)), frozenset(cfg.holidays))

    def _at(self, day: date, minutes: int) -> datetime:
        """A wall-clock time of a local day, in UTC (24:00 is the next day's midnight)."""
        wall = time(minutes % 1440 // 60, minutes % 60)
        return datetime.combine(day + timedelta(days=minutes // 1440), wall, tzinfo=self.zone).astimezone(UTC)

    def windows(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        """The working intervals that overlap [start, end), clipped to it, in order."""
        start, end = _utc(start), _utc(end)
        day = start.astimezone(self.zone).date() - timedelta(days=1)  # a span may start the local day before
        last = min(end.astimezone(self.zone).date(), day + timedelta(days=MAX_DAYS))
        while day <= last:
            if day.weekday() in self.days and day not in self.holidays:
                for a, b in self.spans:
                    lo, hi = max(start, self._at(day, a)), min(end, self._at(day, b))
                    if lo < hi:
                        yield lo, hi
            day += timedelta(days=1)


ALWAYS: Calendar | None = None  # 24x7: every second counts


def seconds(calendar: Calendar | None, start: datetime, end: datetime, limit: float | None = None) -> float:
    """Working seconds in [start, end); once past `limit`, a value over it (the count stops there)."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        return 0.0
    if calendar is None:
        return (end - start).total_seconds()
    total = 0.0
    for lo, hi in calendar.windows(start, end):
        total += (hi - lo).total_seconds()
        if limit is not None and total > limit:
            break
    return total


def active(start: datetime, end: datetime, pauses: Iterable[tuple[datetime, datetime | None]]
           ) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) without the paused stretches (a pause with no end lasts until `end`)."""
    cursor, end = _utc(start), _utc(end)
    for p_start, p_end in sorted((_utc(a), _utc(b) if b is not None else end) for a, b in pauses):
        if p_start > cursor:
            yield cursor, min(p_start, end)
        cursor = max(cursor, p_end)
        if cursor >= end:
            return
    if cursor < end:
        yield cursor, end


def elapsed(calendar: Calendar | None, start: datetime, end: datetime,
            pauses: Iterable[tuple[datetime, datetime | None]] = (), limit: float | None = None) -> float:
    """Working seconds from start to end with the pauses taken out; stops counting past `limit`."""
    total = 0.0
    for lo, hi in active(start, end, pauses):
        total += seconds(calendar, lo, hi, None if limit is None else limit - total)
        if limit is not None and total > limit:
            break
    return total
