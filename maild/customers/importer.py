"""Importing the site's registered users (CSV or JSON) into identification records.

A user's record is found by user id; else an unregistered record owning one
of their addresses becomes theirs (linked), and any other such records are
merged into it; else a record is created. Re-importing updates: values given
are set, empty ones never clear a field, and addresses are only added. The
whole file is checked and applied in the caller's one transaction, so a bad
row (named by its line or entry) leaves nothing half-applied.

The site's facts about a user (products bought and viewed, last visit, money
spent and its currency, mailing lists) follow the same rule: a value given
replaces the record's (a list of SKUs or lists replaces the whole list), an
empty one keeps it. SKUs and list names are CustomerSiteFact rows, indexed, so
segments (maild/bulk) query them in SQL.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, fields
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload

from maild.addresses import AddressRules
from maild.customers.admin import (
    CustomerError, RecordFields, apply_fields, check_email, check_fields, describe, live, merge, split_tags,
)
from maild.models import Customer, CustomerAddress, CustomerSiteFact

RECORD_COLUMNS = ("user_id", "emails", "name", *(f.name for f in fields(RecordFields) if f.name != "name"))
FACT_COLUMNS = ("products_bought", "products_viewed", "last_visit", "total_spent", "currency", "mailing_lists")
COLUMNS = (*RECORD_COLUMNS, *FACT_COLUMNS)
REQUIRED = ("user_id", "emails", "name")
FACT_KINDS = {"products_bought": "bought", "products_viewed": "viewed", "mailing_lists": "list"}
ITEM_SPLIT_RE = re.compile(r"[\s;]+")
MAX_ITEMS = 10_000  # SKUs or lists per user and kind
MAX_SPENT = Decimal("1e12")


@dataclass(frozen=True)
class SiteFacts:
    """What the site knows about a user; None keeps what the record has."""

    bought: tuple[str, ...] | None = None
    viewed: tuple[str, ...] | None = None
    lists: tuple[str, ...] | None = None
    last_visit: date | None = None
    total_spent: Decimal | None = None
    currency: str | None = None


@dataclass(frozen=True)
class UserRow:
    """One registered user from the site's list, checked."""

    where: str  # "line 3" or "entry 2": how errors name it
    user_id: str
    emails: tuple[str, ...]
    values: RecordFields
    facts: SiteFacts = SiteFacts()


@dataclass(frozen=True)
class ImportReport:
    created: int = 0  # new records for users seen for the first time
    updated: int = 0  # the user's record existed and changed
    unchanged: int = 0
    linked: int = 0  # an unregistered record owning one of their addresses became theirs
    merged: int = 0  # further unregistered records merged into a user's record

    def as_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _text(where: str, key: str, value) -> str | None:
    if value is None or isinstance(value, str):
        return value.strip() if value else None
    if key == "user_id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise CustomerError(f"{where}: {key} must be text, not {json.dumps(value)}")


def _list(where: str, key: str, value) -> tuple[str, ...]:
    if value is None or isinstance(value, str):
        return split_tags(value or "")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise CustomerError(f"{where}: {key} must be a list of text, not {json.dumps(value)}")


def _items(where: str, key: str, value) -> tuple[str, ...] | None:
    """SKUs or list names: a cell separated by ; or spaces, or a JSON list; None when empty."""
    if value is None or isinstance(value, str):
        items = tuple(t for t in ITEM_SPLIT_RE.split((value or "").strip()) if t)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = tuple(v.strip() for v in value if v.strip())
    else:
        raise CustomerError(f"{where}: {key} must be text or a list of text, not {json.dumps(value)[:60]}")
    if len(items) > MAX_ITEMS:
        raise CustomerError(f"{where}: {key} has more than {MAX_ITEMS} entries")
    long = next((t for t in items if len(t) > 100), None)
    if long is not None:
        raise CustomerError(f"{where}: {key}: {long[:40]!r}... is longer than 100 characters")
    return tuple(dict.fromkeys(items)) or None


def _facts(where: str, raw: dict) -> SiteFacts:
    visit = _text(where, "last_visit", raw.get("last_visit"))
    spent = raw.get("total_spent")
    currency = _text(where, "currency", raw.get("currency"))
    day = None
    if visit:
        try:
            day = date.fromisoformat(visit) if len(visit) == 10 else datetime.fromisoformat(visit).date()
        except ValueError:
            raise CustomerError(f"{where}: last_visit {visit!r} is not an ISO date such as 2026-05-31") from None
        if day > date.today():
            raise CustomerError(f"{where}: last_visit {visit} is in the future")
    amount = None
    if spent not in (None, "") and not isinstance(spent, bool):
        try:
            amount = Decimal(spent.strip() if isinstance(spent, str) else str(spent))
        except (InvalidOperation, TypeError):
            amount = None
        if amount is None or not amount.is_finite() or amount < 0 or amount >= MAX_SPENT:
            raise CustomerError(f"{where}: total_spent {spent!r} is not an amount such as 149.90")
        amount = amount.quantize(Decimal("0.01"))
    elif isinstance(spent, bool):
        raise CustomerError(f"{where}: total_spent must be a number")
    if currency and not re.fullmatch(r"[A-Za-z]{3}", currency):
        raise CustomerError(f"{where}: currency {currency!r} is not a three-letter code such as EUR")
    return SiteFacts(
        _items(where, "products_bought", raw.get("products_bought")),
        _items(where, "products_viewed", raw.get("products_viewed")),
        _items(where, "mailing_lists", raw.get("mailing_lists")),
        day, amount, currency.upper() if currency else None,
    )


def user_row(where: str, raw: dict) -> UserRow:
    """Check one row (a CSV line or a JSON object) against the documented columns."""
    unknown = sorted(k for k in raw if k not in COLUMNS)
    if unknown:
        raise CustomerError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(COLUMNS)})")
    user_id = _text(where, "user_id", raw.get("user_id"))
    if not user_id or len(user_id) > 100:
        raise CustomerError(f"{where}: user_id is required, at most 100 characters")
    where = f"{where} (user_id {user_id})"
    emails = _list(where, "emails", raw.get("emails"))
    if not emails:
        raise CustomerError(f"{where}: emails is required: at least one address")
    values = {k: _text(where, k, raw.get(k)) for k in RECORD_COLUMNS[2:] if k != "tags"}
    tags = _list(where, "tags", raw.get("tags")) or None
    facts = _facts(where, raw)
    try:
        emails = tuple(check_email(e) for e in emails)
        return UserRow(where, user_id, emails, check_fields(RecordFields(**values, tags=tags)), facts)
    except CustomerError as exc:
        raise CustomerError(f"{where}: {exc}") from None


def _csv_rows(text: str) -> Iterator[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text), restkey="\0extra")
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        problem = f"lacks column {missing[0]!r}" if missing else f"has unknown column {unknown[0]!r}"
        raise CustomerError(f"line 1: the header {problem} (columns: {', '.join(COLUMNS)})")
    for raw in reader:
        where = f"line {reader.line_num}"
        if "\0extra" in raw:
            raise CustomerError(f"{where}: more cells than the header has columns")
        yield where, raw


def _json_rows(text: str) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CustomerError(f"not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise CustomerError("the JSON must be a list of user objects")
    for n, raw in enumerate(data, 1):
        if not isinstance(raw, dict):
            raise CustomerError(f"entry {n}: a user is an object, not {json.dumps(raw)[:60]}")
        yield f"entry {n}", raw


def read_users(data: bytes, fmt: str) -> list[UserRow]:
    """Every row of a CSV or JSON user list, checked; fmt is "csv" or "json"."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CustomerError(f"the file is not UTF-8: {exc}") from None
    rows = _json_rows(text) if fmt == "json" else _csv_rows(text)
    out: list[UserRow] = []
    seen: dict[str, str] = {}
    for where, raw in rows:
        row = user_row(where, raw)
        if row.user_id in seen:
            raise CustomerError(f"{row.where}: the same user as {seen[row.user_id]}")
        seen[row.user_id] = where
        out.append(row)
    return out


class _Known:
    """The records the file refers to, loaded up front and kept current as rows apply.

    A few queries for the whole file instead of several per row: on SQLite an
    import holds the write lock, and ingest waits for it.
    """

    CHUNK = 500

    def __init__(self, session: Session, rules: AddressRules, rows: list[UserRow]) -> None:
        self.session, self.rules = session, rules
        self.users: dict[str, Customer] = {}  # registered user id -> record
        self.owners: dict[str, Customer] = {}  # address key -> live record
        ids = [r.user_id for r in rows]
        keys = list({rules.key(e) for r in rows for e in r.emails})
        with_addresses = selectinload(Customer.addresses)
        for chunk in (ids[i:i + self.CHUNK] for i in range(0, len(ids), self.CHUNK)):
            users = session.scalars(
                select(Customer).where(Customer.registered_user_id.in_(chunk)).options(with_addresses)
            )
            for c in users:
                if c.registered_user_id is not None:
                    self.users[c.registered_user_id] = live(session, c)
        for chunk in (keys[i:i + self.CHUNK] for i in range(0, len(keys), self.CHUNK)):
            owners = session.execute(
                select(CustomerAddress.key, Customer).join(Customer, Customer.id == CustomerAddress.customer_id)
                .where(CustomerAddress.key.in_(chunk)).options(with_addresses)
            )
            for key, c in owners:
                self.owners[key] = live(session, c)

    def holders(self, row: UserRow, user: Customer | None) -> list[Customer]:
        """Other records owning the row's addresses; an error when one is another user's."""
        found: dict[int, Customer] = {}
        for email in row.emails:
            holder = self.owners.get(self.rules.key(email))
            if holder is None or holder is user:
                continue
            if holder.registered_user_id and holder.registered_user_id != row.user_id:
                self.session.flush()  # so a record made earlier in this file has its id to name
                raise CustomerError(f"{row.where}: {email} belongs to {describe(holder)}")
            found[id(holder)] = holder
        return list(found.values())

    def merged(self, gone: Customer, into: Customer) -> None:
        for key, c in self.owners.items():
            if c is gone:
                self.owners[key] = into


def _import_one(known: _Known, row: UserRow, counts: Counter) -> None:
    session, rules = known.session, known.rules
    user = known.users.get(row.user_id)
    holders = known.holders(row, user)
    if user is None and holders:
        user = holders.pop(0)
        user.registered_user_id = row.user_id
        outcome = "linked"
    elif user is None:
        user = Customer(name="", tags=[], registered_user_id=row.user_id, addresses=[])
        session.add(user)
        outcome = "created"
    else:
        outcome = "updated" if holders else "unchanged"
    known.users[row.user_id] = user
    for other in holders:
        session.flush()
        user = merge(session, other.id, user.id)
        known.merged(other, user)
    counts["merged"] += len(holders)
    changed = apply_fields(user, row.values)
    have = {a.key for a in user.addresses}
    for email in row.emails:
        key = rules.key(email)
        if key not in have:
            user.addresses.append(CustomerAddress(email=email, key=key))
            have.add(key)
            known.owners[key] = user
            changed = True
    changed = _apply_facts(session, user, row.facts) or changed
    counts["updated" if outcome == "unchanged" and changed else outcome] += 1


def _apply_facts(session: Session, user: Customer, facts: SiteFacts) -> bool:
    """Set the facts given; a list given replaces the record's list of that kind. True when anything changed."""
    changed = False
    for name in ("last_visit", "total_spent", "currency"):
        value = getattr(facts, name)
        if value is not None and getattr(user, name) != value:
            setattr(user, name, value)
            changed = True
    lists = {"bought": facts.bought, "viewed": facts.viewed, "list": facts.lists}
    given = {kind: values for kind, values in lists.items() if values is not None}
    if not given:
        return changed
    if user.id is None:
        session.flush()
    have: dict[str, set[str]] = {kind: set() for kind in given}
    q = select(CustomerSiteFact.kind, CustomerSiteFact.value).where(
        CustomerSiteFact.customer_id == user.id, CustomerSiteFact.kind.in_(list(given)))
    for kind, value in session.execute(q):
        have[kind].add(value)
    for kind, values in given.items():
        wanted = set(values)
        gone, new = have[kind] - wanted, [v for v in values if v not in have[kind]]
        if gone:
            session.execute(delete(CustomerSiteFact).where(
                CustomerSiteFact.customer_id == user.id, CustomerSiteFact.kind == kind,
                CustomerSiteFact.value.in_(sorted(gone))))
        if new:
            session.add_all(CustomerSiteFact(customer_id=user.id, kind=kind, value=v) for v in new)
        changed = changed or bool(gone or new)
    return changed


def import_users(session: Session, rules: AddressRules, rows: list[UserRow]) -> ImportReport:
    counts: Counter = Counter()
    known = _Known(session, rules, rows)
    for row in rows:
        _import_one(known, row, counts)
    session.flush()
    return ImportReport(**counts)
