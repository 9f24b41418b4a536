"""Segments: which customers a campaign goes to, as one SQL query.

A segment is a set of flags over what the site told us (products bought and
viewed, last visit, money spent, mailing lists) and maild's own data (tags,
language, time zone, categories of past issues, last contact, open issues,
registered or not). Values repeated for one flag match any of them; different
flags must all match. The filter, the exclusions and the address each
customer gets are SQL (SQLAlchemy Core) so a segment of a million records
costs the database, never this process's memory.

Left out, and counted by reason: merged records, records with a rep's or one
of our own addresses, opted-out records, records without an address, and
records whose every address is failing after a bounce or a refusal. Each
record gets one address (its oldest that is not failing), and an address
belongs to one record, so nobody is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import date, datetime, time, UTC
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, case, exists, false, func, literal, not_, or_, select
from sqlalchemy.sql import ColumnElement, Select

from maild.models import (
    Category, Customer, CustomerAddress, CustomerSiteFact, Interaction, Issue, table_of,
)

_c = table_of(Customer)
_a = table_of(CustomerAddress)
_f = table_of(CustomerSiteFact)
_i = table_of(Issue)
_k = table_of(Category)
_x = table_of(Interaction)

REASONS = ("merged", "rep-or-own-address", "opted-out", "no-address", "failing")


@dataclass(frozen=True)
class Segment:
    """The flags of `maild bulk preview/send`; empty means everyone."""

    bought: tuple[str, ...] = ()
    viewed: tuple[str, ...] = ()
    spent_over: Decimal | None = None
    spent_under: Decimal | None = None
    last_visit_before: date | None = None
    last_visit_after: date | None = None
    lists: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    time_zones: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    registered: bool | None = None
    contacted_before: date | None = None
    contacted_after: date | None = None
    has_open_issue: bool | None = None

    def as_json(self) -> dict[str, Any]:
        """The flags given, as JSON values (kept on the campaign)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value in (None, ()):
                continue
            if isinstance(value, tuple):
                out[f.name] = list(value)
            elif isinstance(value, (Decimal, date)):
                out[f.name] = str(value)
            else:
                out[f.name] = value
        return out

    def describe(self) -> str:
        """The segment as the flags that select it."""
        parts = []
        for name, value in self.as_json().items():
            flag = "--" + FLAG_NAMES.get(name, name).replace("_", "-")
            if isinstance(value, list):
                parts += [f"{flag} {v}" for v in value]
            elif value is True:
                parts.append(flag)
            elif value is False:
                parts.append({"registered": "--unregistered", "has_open_issue": "--no-open-issue"}[name])
            else:
                parts.append(f"{flag} {value}")
        return " ".join(parts) or "(everyone)"


FLAG_NAMES = {"lists": "list", "tags": "tag", "languages": "language", "time_zones": "time_zone",
              "categories": "category"}


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _fact(kind: str, values: Iterable[str]) -> ColumnElement[bool]:
    return exists(select(1).select_from(_f).where(
        _f.c.customer_id == _c.c.id, _f.c.kind == kind, _f.c.value.in_(list(values))))


def _tagged(tags: Iterable[str], dialect: str) -> ColumnElement[bool]:
    """The record carries one of the tags (case-insensitive), read from its JSON list."""
    if dialect == "sqlite":
        elements = func.json_each(_c.c.tags).table_valued("value")
    else:
        elements = func.json_array_elements_text(_c.c.tags).table_valued("value")
    wanted = [t.lower() for t in tags]
    return exists(select(1).select_from(elements).where(func.lower(elements.c.value).in_(wanted)))


def _language(languages: Iterable[str]) -> ColumnElement[bool]:
    """`pt` matches pt and pt-BR; `pt-BR` matches only pt-BR (either separator)."""
    lang = func.replace(func.lower(_c.c.language), "_", "-")
    conds = []
    for value in languages:
        v = value.lower().replace("_", "-")
        conds += [lang == v, lang.like(v + "-%")]
    return or_(*conds)


def _contact_since(day: date) -> ColumnElement[bool]:
    """A mail from or to them since `day` that was not automatic (a campaign is not contact)."""
    return exists(select(1).select_from(_x).where(
        _x.c.customer_id == _c.c.id, _x.c.auto_generated.is_(False), _x.c.created_at >= _midnight(day)))


def conditions(seg: Segment, dialect: str) -> list[ColumnElement[bool]]:
    """The segment's flags as SQL conditions on customers."""
    out: list[ColumnElement[bool]] = []
    if seg.bought:
        out.append(_fact("bought", seg.bought))
    if seg.viewed:
        out.append(_fact("viewed", seg.viewed))
    if seg.lists:
        out.append(_fact("list", seg.lists))
    if seg.spent_over is not None:
        out.append(_c.c.total_spent > seg.spent_over)
    if seg.spent_under is not None:
        out.append(_c.c.total_spent < seg.spent_under)
    if seg.last_visit_before is not None:
        out.append(_c.c.last_visit < seg.last_visit_before)
    if seg.last_visit_after is not None:
        out.append(_c.c.last_visit >= seg.last_visit_after)
    if seg.tags:
        out.append(_tagged(seg.tags, dialect))
    if seg.languages:
        out.append(_language(seg.languages))
    if seg.time_zones:
        out.append(func.lower(_c.c.time_zone).in_([z.lower() for z in seg.time_zones]))
    if seg.categories:
        out.append(exists(select(1).select_from(_i.join(_k, _k.c.id == _i.c.category_id)).where(
            _i.c.customer_id == _c.c.id, _k.c.name.in_(list(seg.categories)))))
    if seg.registered is not None:
        registered = _c.c.registered_user_id.is_not(None)
        out.append(registered if seg.registered else not_(registered))
    if seg.contacted_before is not None:
        out.append(not_(_contact_since(seg.contacted_before)))
    if seg.contacted_after is not None:
        out.append(_contact_since(seg.contacted_after))
    if seg.has_open_issue is not None:
        open_issue = exists(select(1).select_from(_i).where(_i.c.customer_id == _c.c.id, _i.c.status != "closed"))
        out.append(open_issue if seg.has_open_issue else not_(open_issue))
    return out


def _usable(a, now: datetime) -> ColumnElement[bool]:
    return or_(a.c.failing_until.is_(None), a.c.failing_until <= now)


def _reason(reserved_keys: frozenset[str], now: datetime) -> ColumnElement[str | None]:
    """Why a matching record gets nothing, or NULL when it gets the mail (first reason wins)."""
    a = _a.alias("any_address")  # never the outer query's address row
    mine = a.c.customer_id == _c.c.id
    has_address = exists(select(1).select_from(a).where(mine).correlate(_c))
    reserved = (exists(select(1).select_from(a).where(mine, a.c.key.in_(sorted(reserved_keys))).correlate(_c))
                if reserved_keys else false())
    usable = exists(select(1).select_from(a).where(mine, _usable(a, now)).correlate(_c))
    return case(
        (_c.c.merged_into_id.is_not(None), literal("merged")),
        (reserved, literal("rep-or-own-address")),
        (_c.c.opted_out_at.is_not(None), literal("opted-out")),
        (not_(has_address), literal("no-address")),
        (not_(usable), literal("failing")),
        else_=None,
    )


@dataclass(frozen=True)
class Audience:
    """A segment resolved against the database's rules for one moment."""

    segment: Segment
    dialect: str
    reserved_keys: frozenset[str]  # comparison keys of reps' and our own addresses
    now: datetime

    def _where(self) -> list[ColumnElement[bool]]:
        return conditions(self.segment, self.dialect)

    def counts(self) -> Select:
        """(reason, count) rows: reason NULL for the records that get the mail. One query."""
        reason = _reason(self.reserved_keys, self.now).label("reason")
        inner = select(reason).select_from(_c).where(and_(True, *self._where())).subquery()
        return select(inner.c.reason, func.count()).group_by(inner.c.reason)

    def recipients(self) -> Select:
        """(customer_id, name, email, key) of every record that gets the mail, by id: its oldest usable address."""
        a = _a.alias("usable_address")
        first = (select(func.min(a.c.id)).where(a.c.customer_id == _c.c.id, _usable(a, self.now))
                 .correlate(_c).scalar_subquery())
        return (
            select(_c.c.id, _c.c.name, _a.c.email, _a.c.key)
            .select_from(_c.join(_a, _a.c.id == first))
            .where(and_(True, *self._where()), _reason(self.reserved_keys, self.now).is_(None))
            .order_by(_c.c.id)
        )
