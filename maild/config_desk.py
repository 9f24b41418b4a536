"""Config sections for the desk: canned responses, spelling, picklists and categories
that reps work with, turnaround targets, business calendars and the self-test.

Kept beside config.py (which composes them into Settings) so that file stays
readable; the same rules hold: unknown keys are errors, every value checked at
load (config_base.py). It imports only config_base, so config.py can import it.
"""

from __future__ import annotations

import re
from itertools import pairwise
from datetime import date
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from maild.config_base import Strict, check_addresses


class CannedConfig(Strict):
    """A canned response: company-endorsed phrasing a rep inserts by name."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""  # the one line shown in `maild canned list`
    body: str


class SpellingConfig(Strict):
    mode: Literal["off", "warn", "hold"] = "warn"
    words: tuple[str, ...] = ()  # product and company names the checker must accept


class PicklistConfig(Strict):
    """An ordered list of values a rep picks from (#type, #used, #log's channel), for the reports."""

    name: str = Field(pattern=r"^[a-z0-9_]+$", max_length=50)
    description: str = ""
    values: tuple[str, ...] = Field(min_length=1)

    @field_validator("values")
    @classmethod
    def _values(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        folded = [x.strip().lower() for x in v]
        if any(not x or len(x) > 200 for x in folded):
            raise ValueError("every value must be 1 to 200 characters")
        if len(set(folded)) != len(folded):
            raise ValueError("values must be unique (case-insensitively)")
        return tuple(x.strip() for x in v)


class CategoryConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    reps: tuple[str, ...] = ()  # rep emails notified for this category (before the mailbox's)



DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOURS_RE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


def parse_hours(value: str) -> tuple[int, int]:
    """"09:00-17:30" as minutes of the day (540, 1050); "24:00" ends a day."""
    m = HOURS_RE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not HH:MM-HH:MM")
    h1, m1, h2, m2 = map(int, m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if m1 > 59 or m2 > 59 or h1 > 23 or end > 24 * 60 or start >= end:
        raise ValueError(f"{value!r}: the start must be a time of day before the end (at most 24:00)")
    return start, end


class CalendarConfig(Strict):
    """[[calendar]]: working days and hours in a time zone, and holidays; turnaround counts only these."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    time_zone: str = "UTC"
    days: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = ("mon", "tue", "wed", "thu", "fri")
    hours: tuple[str, ...] = ("09:00-17:00",)
    holidays: tuple[date, ...] = ()
    mailboxes: tuple[str, ...] = ()  # issues of these mailboxes use this calendar
    categories: tuple[str, ...] = ()  # ... and of these categories (a category's calendar wins)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a time zone (e.g. Europe/Berlin, America/New_York, UTC)") from None
        return v

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        spans = sorted(parse_hours(x) for x in v)
        if not spans:
            raise ValueError("at least one span of working hours is needed")
        for (_, end), (start, _) in pairwise(spans):
            if start < end:
                raise ValueError("spans of working hours must not overlap")
        return v

    @field_validator("days")
    @classmethod
    def _days(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one working day is needed")
        return v


class TurnaroundConfig(Strict):
    """[[turnaround]]: the targets of issues of a category and/or priority; the first match wins."""

    category: str | None = None
    priority: Literal["low", "normal", "high", "urgent"] | None = None
    first_response_hours: float | None = Field(default=None, gt=0)  # unset: [sla] first_response_hours
    resolution_hours: float | None = Field(default=None, gt=0)  # unset: [sla] resolution_hours
    calendar: str | None = None  # unset: the mailbox's or category's calendar, else [sla] calendar


class SlaConfig(Strict):
    """[sla]: the default targets and how reminders and escalations go out."""

    interval: float = Field(default=300.0, gt=0)  # seconds between reminder passes in `maild run`
    remind_at: float = Field(default=0.75, gt=0, lt=1)  # fraction of a target when the reminder goes
    escalate_to: tuple[str, ...] = ()  # the lead(s) told when a target is missed
    first_response_hours: float = Field(default=24.0, gt=0)
    resolution_hours: float | None = Field(default=None, gt=0)  # unset: no resolution target
    calendar: str | None = None  # unset: 24x7

    _escalate = field_validator("escalate_to")(lambda v: check_addresses(v))


class SelftestConfig(Strict):
    """[selftest]: a signed probe to every mailbox address and alias, back through the intake."""

    interval: float = Field(default=0.0, ge=0)  # seconds between probe rounds in `maild run`; 0: on demand only
    alert_after: float = Field(default=600.0, gt=0)  # a probe not back within this many seconds is late
    alert_to: tuple[str, ...] = ()  # told once when an address fails, and once when it recovers

    _alert = field_validator("alert_to")(lambda v: check_addresses(v))


def check_references(calendars, policies, sla, mailboxes: set[str], categories: set[str]) -> None:
    """Names used across sections must exist: calendars, their mailboxes and categories, policies' categories."""
    names = [c.name for c in calendars]
    if len(set(names)) != len(names):
        raise ValueError(f"calendar names must be unique: {sorted({n for n in names if names.count(n) > 1})}")
    for c in calendars:
        if unknown := [m for m in c.mailboxes if m not in mailboxes]:
            raise ValueError(f"calendar {c.name!r} names mailboxes that no [[mailbox]] defines: {unknown}")
        if unknown := [k for k in c.categories if k not in categories]:
            raise ValueError(f"calendar {c.name!r} names categories that no [[category]] defines: {unknown}")
    for i, p in enumerate(policies):
        if p.category is not None and p.category not in categories:
            raise ValueError(f"turnaround[{i}] names category {p.category!r}, which no [[category]] defines")
        if p.calendar is not None and p.calendar not in names:
            raise ValueError(f"turnaround[{i}] names calendar {p.calendar!r}, which no [[calendar]] defines")
    if sla.calendar is not None and sla.calendar not in names:
        raise ValueError(f"sla.calendar names {sla.calendar!r}, which no [[calendar]] defines")
