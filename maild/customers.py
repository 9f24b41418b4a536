"""Customer identification records: how they are shown and found.

Matching a sender to a record is the identify stage's job; this module is the
read and admin side of the same records.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from .models import Customer, Issue
from .timefmt import iso as _iso


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
    }


def list_customers(session: Session) -> list[dict]:
    rows = session.scalars(
        select(Customer).where(Customer.merged_into_id.is_(None)).options(selectinload(Customer.addresses)).order_by(Customer.id)
    )
    return [customer_json(c) for c in rows]


def show_customer(session: Session, customer_id: int) -> dict | None:
    c = session.get(Customer, customer_id)
    if c is None:
        return None
    out = customer_json(c)
    out["issues"] = list_issues_for_customer(session, customer_id)
    return out


def list_issues_for_customer(session: Session, customer_id: int) -> list[dict]:
    ids = select(Customer.id).where((Customer.id == customer_id) | (Customer.merged_into_id == customer_id))
    rows = session.scalars(
        select(Issue).where(Issue.customer_id.in_(ids)).options(selectinload(Issue.category)).order_by(Issue.id)
    )
    return [
        {"id": i.id, "status": i.status, "category": i.category.name, "subject": i.subject,
         "created": _iso(i.opened_at), "updated": _iso(i.updated_at)}
        for i in rows
    ]
