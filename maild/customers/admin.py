"""Changing identification records: fields, addresses, merges, registered users.

History is never lost: a merge moves addresses, issues and interactions to the
record that stays and marks the other `merged_into` (it is kept, never
deleted), so a merged record is never matched again and its past shows under
the survivor. An address belongs to one live record at most; two registered
users are never merged. These functions never commit: the caller owns the
transaction, so a failed command changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from datetime import date
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from maild.addresses import AddressRules
from maild.config_base import ADDRESS_RE
from maild.models import Customer, CustomerAddress, Interaction, Issue

LENGTHS = {"name": 200, "postal_code": 20, "phone": 50, "language": 20, "time_zone": 50}
LANGUAGE_RE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TAG_SPLIT_RE = re.compile(r"[\s,;]+")


class CustomerError(Exception):
    """A change to identification records that cannot be made as asked; says why."""


@dataclass(frozen=True)
class RecordFields:
    """Values to set on a record: None leaves a field as it is, "" (or no tags) clears it."""

    name: str | None = None
    postal_code: str | None = None
    phone: str | None = None
    other_id_info: str | None = None
    tags: tuple[str, ...] | None = None
    language: str | None = None
    time_zone: str | None = None
    birthday: str | None = None  # YYYY-MM-DD


def split_tags(text: str) -> tuple[str, ...]:
    """Tags as written in a CSV cell or on the command line: separated by ;, comma or space."""
    return tuple(t for t in TAG_SPLIT_RE.split(text.strip()) if t)


def check_email(email: str) -> str:
    email = email.strip()
    if len(email) > 320 or not ADDRESS_RE.match(email):
        raise CustomerError(f"{email!r} is not an email address")
    return email


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
        return True
    except (ZoneInfoNotFoundError, ValueError):
        return not available_timezones()  # no zone database here: nothing to check against


def _check_value(field: str, value: str) -> None:
    limit = LENGTHS.get(field)
    if limit and len(value) > limit:
        raise CustomerError(f"{field} is longer than {limit} characters")
    if field == "language" and value and not LANGUAGE_RE.match(value):
        raise CustomerError(f"language {value!r} is not a language tag such as en or pt-BR")
    if field == "time_zone" and value and not _known_zone(value):
        raise CustomerError(f"time_zone {value!r} is not a time zone such as Europe/Berlin")
    if field == "birthday" and value:
        try:
            if not DATE_RE.match(value):
                raise ValueError
            born = date.fromisoformat(value)
        except ValueError:
            raise CustomerError(f"birthday {value!r} is not a date as YYYY-MM-DD") from None
        if born > date.today():
            raise CustomerError(f"birthday {value} is in the future")


def check_fields(values: RecordFields) -> RecordFields:
    """The same values stripped and validated; CustomerError names the bad field."""
    clean = {}
    for f in fields(RecordFields):
        value = getattr(values, f.name)
        if f.name == "tags" and value is not None:
            value = tuple(dict.fromkeys(t.strip() for t in value if t.strip()))
            if any(len(t) > 50 or TAG_SPLIT_RE.search(t) for t in value):
                raise CustomerError("a tag is one word of at most 50 characters")
        elif value is not None:
            value = value.strip()
            _check_value(f.name, value)
        clean[f.name] = value
    return RecordFields(**clean)


def apply_fields(customer: Customer, values: RecordFields) -> bool:
    """Set the checked values on the record; True when anything changed."""
    changed = False
    for f in fields(RecordFields):
        value = getattr(values, f.name)
        if value is None:
            continue
        if f.name == "tags":
            value = list(value)
        elif f.name == "birthday":
            value = date.fromisoformat(value) if value else None
        elif f.name != "name":
            value = value or None
        if getattr(customer, f.name) != value:
            setattr(customer, f.name, value)
            changed = True
    return changed


def live(session: Session, customer: Customer) -> Customer:
    """The record itself, or the record it was (in turn) merged into."""
    for _ in range(50):
        if customer.merged_into_id is None:
            break
        customer = session.get_one(Customer, customer.merged_into_id)
    return customer


def get_live(session: Session, customer_id: int) -> Customer:
    """A record that can be changed: it exists and was not merged into another."""
    customer = session.get(Customer, customer_id)
    if customer is None:
        raise CustomerError(f"no customer {customer_id}")
    if customer.merged_into_id is not None:
        raise CustomerError(f"customer {customer_id} was merged into customer {live(session, customer).id}")
    return customer


def owner(session: Session, key: str) -> Customer | None:
    """The live record owning an address (by comparison key), if any."""
    found = session.scalar(select(Customer).join(CustomerAddress).where(CustomerAddress.key == key))
    return live(session, found) if found is not None else None


def describe(customer: Customer) -> str:
    who = f"customer {customer.id}"
    if customer.registered_user_id:
        who += f" (registered user {customer.registered_user_id})"
    elif customer.name:
        who += f" ({customer.name})"
    return who


def edit(session: Session, customer_id: int, values: RecordFields,
         add_tags: tuple[str, ...] = (), remove_tags: tuple[str, ...] = ()) -> Customer:
    customer = get_live(session, customer_id)
    if add_tags or remove_tags:
        base = values.tags if values.tags is not None else tuple(customer.tags)
        gone = {t.lower() for t in remove_tags}
        values = replace(values, tags=tuple(t for t in (*base, *add_tags) if t.lower() not in gone))
    apply_fields(customer, check_fields(values))
    session.flush()
    return customer


def add_address(session: Session, rules: AddressRules, customer_id: int, email: str) -> tuple[Customer, bool]:
    """Give the record another address: (the record, False when it already had it)."""
    customer = get_live(session, customer_id)
    email = check_email(email)
    holder = owner(session, rules.key(email))
    if holder is not None and holder.id == customer.id:
        return customer, False
    if holder is not None:
        raise CustomerError(
            f"{email} belongs to {describe(holder)}; to make them one record: "
            f"maild customers merge {holder.id} {customer.id}"
        )
    customer.addresses.append(CustomerAddress(email=email, key=rules.key(email)))
    session.flush()
    return customer, True


def remove_address(session: Session, rules: AddressRules, customer_id: int, email: str) -> Customer:
    customer = get_live(session, customer_id)
    key, lowered = rules.key(email), email.strip().lower()
    row = next((a for a in customer.addresses if a.key == key or a.email.lower() == lowered), None)
    if row is None:
        have = ", ".join(a.email for a in customer.addresses) or "none"
        raise CustomerError(f"customer {customer_id} has no address {email.strip()} (its addresses: {have})")
    customer.addresses.remove(row)
    session.flush()
    return customer


def _fill_blanks(target: Customer, source: Customer) -> None:
    """The surviving record keeps its own values; the merged one fills its blanks."""
    for name in ("name", "postal_code", "phone", "other_id_info", "language", "time_zone", "birthday"):
        if not getattr(target, name) and getattr(source, name):
            setattr(target, name, getattr(source, name))
    have = {t.lower() for t in target.tags}
    extra = [t for t in source.tags if t.lower() not in have]
    if extra:
        target.tags = [*target.tags, *extra]


def merge(session: Session, source_id: int, target_id: int) -> Customer:
    """Merge record source into target: target keeps everything of both."""
    if source_id == target_id:
        raise CustomerError(f"customer {source_id} cannot be merged into itself")
    source, target = get_live(session, source_id), get_live(session, target_id)
    if source.registered_user_id and target.registered_user_id:
        raise CustomerError(
            f"{describe(source)} and {describe(target)} are both registered users; they are never merged"
        )
    _fill_blanks(target, source)
    user_id = source.registered_user_id
    if user_id:  # unique: off the old record before it goes on the new one
        source.registered_user_id = None
        session.flush()
        target.registered_user_id = user_id
    source.merged_into_id = target.id
    session.flush()
    moved = {"synchronize_session": False}
    for model in (CustomerAddress, Issue, Interaction):
        session.execute(update(model).where(model.customer_id == source.id).values(customer_id=target.id),
                        execution_options=moved)
    session.execute(update(Customer).where(Customer.merged_into_id == source.id).values(merged_into_id=target.id),
                    execution_options=moved)
    session.expire_all()
    return session.get_one(Customer, target.id)


def link(session: Session, customer_id: int, user_id: str) -> tuple[Customer, bool]:
    """Record customer_id is registered user user_id; (the user's record, merged?).

    When that user already has a record, this one is merged into it.
    """
    user_id = user_id.strip()
    if not user_id or len(user_id) > 100:
        raise CustomerError("a registered user id is 1 to 100 characters")
    customer = get_live(session, customer_id)
    if customer.registered_user_id == user_id:
        return customer, False
    if customer.registered_user_id:
        raise CustomerError(f"{describe(customer)} is already a registered user")
    existing = session.scalar(select(Customer).where(Customer.registered_user_id == user_id))
    if existing is not None:
        return merge(session, customer.id, live(session, existing).id), True
    customer.registered_user_id = user_id
    session.flush()
    return customer, False


def recheck(session: Session, rules: AddressRules, customer: Customer) -> tuple[Customer, str | None]:
    """Look again for a registered user owning any of this record's addresses.

    Addresses are compared under the current rules, so a record made before
    the address rules changed is found too: an unregistered record is merged
    into the registered user's, or a user's record takes in unregistered ones.
    Returns the record to show.
    """
    keys = {a.key for a in customer.addresses} | {rules.key(a.email) for a in customer.addresses}
    if not keys:
        return customer, None
    rows = session.scalars(
        select(Customer).join(CustomerAddress)
        .where(CustomerAddress.key.in_(keys), CustomerAddress.customer_id != customer.id)
    )
    others = {c.id: c for c in (live(session, r) for r in rows) if c.id != customer.id}
    registered = [c for c in others.values() if c.registered_user_id]
    if customer.registered_user_id is None and len(registered) == 1:
        user = registered[0]
        note = f"customer {customer.id} is registered user {user.registered_user_id}: merged into customer {user.id}"
        return merge(session, customer.id, user.id), note
    ids = sorted(c.id for c in others.values() if not c.registered_user_id)
    if customer.registered_user_id and ids:
        for other_id in ids:
            customer = merge(session, other_id, customer.id)
        return customer, f"merged unregistered customer(s) {', '.join(map(str, ids))} sharing an address"
    return customer, None
