"""Customer identification records: how they are shown and found.

Matching a sender to a record is the identify stage's job; changing records
is admin.py's. This module shows them: merged records never appear in
lists or searches (their history shows under the record they were merged
into), and showing a record first re-checks whether it now belongs to a
registered user, as the ArsDigita module did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session, selectinload

from maild.addresses import AddressRules
from maild.customers.admin import CustomerError, live, recheck
from maild.models import Action, Customer, CustomerAddress, CustomerSiteFact, GiftCertificate, Interaction, Issue
from maild.timefmt import iso as _iso

SEARCH_LIMIT = 200


@dataclass(frozen=True)
class Shown:
    """A record as `customers show` prints it, and what the re-check did on the way."""

    record: dict
    notes: tuple[str, ...] = ()


def customer_json(c: Customer) -> dict:
    return {
        "id": c.id,
        "name": c.name,
        "emails": [a.email for a in c.addresses],
        "registered_user_id": c.registered_user_id,
        "postal_code": c.postal_code,
        "phone": c.phone,
        "other_id_info": c.other_id_info,
        "tags": list(c.tags),
        "language": c.language,
        "time_zone": c.time_zone,
        "birthday": c.birthday.isoformat() if c.birthday else None,
        "created": _iso(c.created_at),
        "last_visit": c.last_visit.isoformat() if c.last_visit else None,
        "total_spent": f"{c.total_spent:.2f}" if c.total_spent is not None else None,
        "currency": c.currency,
        "opted_out": _iso(c.opted_out_at),
    }


def site_facts(session: Session, customer_id: int) -> dict:
    """The site's SKUs and mailing lists on a record, and the gift certificates it was issued."""
    out: dict = {"products_bought": [], "products_viewed": [], "mailing_lists": []}
    names = {"bought": "products_bought", "viewed": "products_viewed", "list": "mailing_lists"}
    q = (select(CustomerSiteFact.kind, CustomerSiteFact.value).where(CustomerSiteFact.customer_id == customer_id)
         .order_by(CustomerSiteFact.id))
    for kind, value in session.execute(q):
        out[names[kind]].append(value)
    out["gift_certificates"] = [
        {"code": code, "amount": f"{amount:.2f}", "currency": currency, "state": state, "campaign": campaign}
        for code, amount, currency, state, campaign in session.execute(
            select(GiftCertificate.code, GiftCertificate.amount, GiftCertificate.currency, GiftCertificate.state,
                   GiftCertificate.campaign_id).where(GiftCertificate.customer_id == customer_id)
            .order_by(GiftCertificate.id))
    ]
    return out


def _live_records():
    return select(Customer).where(Customer.merged_into_id.is_(None)).options(selectinload(Customer.addresses))


def list_customers(session: Session) -> list[dict]:
    return [customer_json(c) for c in session.scalars(_live_records().order_by(Customer.id))]


def _has_tag(session: Session, tag: str):
    """The record carries this tag (case-insensitive), read from the JSON list in SQL."""
    if session.get_bind().dialect.name == "sqlite":
        elements = func.json_each(Customer.tags).table_valued("value")
    else:
        elements = func.json_array_elements_text(Customer.tags).table_valued("value")
    return exists(select(1).select_from(elements).where(func.lower(elements.c.value) == tag))


def _digits(column):
    for ch in " -().+/":
        column = func.replace(column, ch, "")
    return column


def search_customers(session: Session, text: str, limit: int = SEARCH_LIMIT) -> list[dict]:
    """Live records whose name, any address or phone contains text, or with text as a tag."""
    term = text.strip().lower()
    if not term:
        raise CustomerError("search for what? a name, an address, a phone number or a tag")
    by_address = select(CustomerAddress.customer_id).where(
        func.lower(CustomerAddress.email).contains(term, autoescape=True)
    )
    conditions = [
        func.lower(Customer.name).contains(term, autoescape=True),
        Customer.id.in_(by_address),
        func.lower(Customer.phone).contains(term, autoescape=True),
        Customer.registered_user_id == text.strip(),
        _has_tag(session, term),
    ]
    digits = re.sub(r"\D", "", term)
    if len(digits) >= 3 and re.fullmatch(r"[\d\s\-().+/]+", term):  # a phone number, however written
        conditions.append(_digits(Customer.phone).contains(digits))
    rows = session.scalars(_live_records().where(or_(*conditions)).order_by(Customer.id).limit(limit))
    return [customer_json(c) for c in rows]


def show_customer(session: Session, rules: AddressRules, customer_id: int) -> Shown | None:
    """The record with all its issues, after re-checking it against registered users.

    A merged record shows as the record it was merged into. May link or merge
    (see admin.recheck): run it in a transaction.
    """
    asked = session.get(Customer, customer_id)
    if asked is None:
        return None
    customer = live(session, asked)
    notes = [f"customer {customer_id} was merged into customer {customer.id}"] if customer.id != customer_id else []
    customer, note = recheck(session, rules, customer)
    notes += [note] if note else []
    out = customer_json(customer)
    out["merged_ids"] = list(session.scalars(
        select(Customer.id).where(Customer.merged_into_id == customer.id).order_by(Customer.id)
    ))
    out.update(site_facts(session, customer.id))
    out["issues"] = list_issues_for_customer(session, customer.id)
    return Shown(out, tuple(notes))


def list_issues_for_customer(session: Session, customer_id: int) -> list[dict]:
    """Every issue the customer raised or wrote in (the seed's ec_all_cs_issues_by_one_user)."""
    ids = select(Customer.id).where((Customer.id == customer_id) | (Customer.merged_into_id == customer_id))
    own = set(session.scalars(ids))
    wrote = (
        select(Action.issue_id).join(Interaction, Interaction.id == Action.interaction_id)
        .where(Interaction.customer_id.in_(own))
    )
    rows = session.scalars(
        select(Issue).where(or_(Issue.customer_id.in_(own), Issue.id.in_(wrote)))
        .options(selectinload(Issue.category)).order_by(Issue.id)
    )
    return [
        {"id": i.id, "status": i.status, "category": i.category.name, "subject": i.subject,
         "created": _iso(i.opened_at), "updated": _iso(i.updated_at),
         "role": "customer" if i.customer_id in own else "participant"}
        for i in rows
    ]
