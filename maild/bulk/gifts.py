"""Gift certificates: issued to customers (with a campaign), listed, exported and voided for the shop.

A code is 16 characters from `secrets` over an alphabet without look-alikes
(no 0/O, 1/I/L), in four groups: 80 bits, so codes cannot be guessed and a
clash is not worth a retry. The shop redeems codes; maild only issues them,
records them on the customer's issue (the seed's `gift_certificate_id`) and
record, and voids them when asked.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from maild.models import GiftCertificate, utcnow
from maild.timefmt import iso

ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
GROUPS, GROUP_LEN = 4, 4
FIELDS = ("code", "amount", "currency", "expires", "customer_id", "email", "campaign", "state", "issue", "created")
STATES = ("issued", "void", "expired")


class GiftError(Exception):
    """A gift certificate cannot be issued or changed as asked."""


@dataclass(frozen=True)
class Gift:
    """What each recipient of a campaign gets."""

    amount: Decimal
    currency: str
    expires: date | None

    @classmethod
    def checked(cls, amount: str, currency: str, expires: date | None, today: date | None = None) -> Gift:
        try:
            value = Decimal(amount)
        except InvalidOperation:
            raise GiftError(f"gift amount {amount!r} is not a number such as 25 or 9.99") from None
        if not value.is_finite() or value <= 0 or value != value.quantize(Decimal("0.01")) or value >= 10**10:
            raise GiftError(f"gift amount {amount!r} must be above 0, with at most 2 decimals")
        cur = currency.strip().upper()
        if len(cur) != 3 or not cur.isalpha() or not cur.isascii():
            raise GiftError(f"gift currency {currency!r} is not a three-letter code such as EUR or USD")
        if expires is not None and expires <= (today or date.today()):
            raise GiftError(f"gift expiry {expires} is not in the future")
        return cls(value.quantize(Decimal("0.01")), cur, expires)


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(GROUPS * GROUP_LEN))
    return "-".join(raw[i:i + GROUP_LEN] for i in range(0, len(raw), GROUP_LEN))


def normal_code(text: str) -> str:
    """A code as a person may type it: any case, with or without dashes or spaces."""
    raw = "".join(ch for ch in text.upper() if ch.isalnum())
    return "-".join(raw[i:i + GROUP_LEN] for i in range(0, len(raw), GROUP_LEN))


def issue_gift(session: Session, gift: Gift, customer_id: int, email: str, campaign_id: int | None,
               issue_id: int | None) -> GiftCertificate:
    row = GiftCertificate(code=new_code(), amount=gift.amount, currency=gift.currency, expires=gift.expires,
                          campaign_id=campaign_id, customer_id=customer_id, issue_id=issue_id, email=email,
                          state="issued", created_at=utcnow())
    session.add(row)
    return row


def state_of(g: GiftCertificate, today: date | None = None) -> str:
    if g.state == "issued" and g.expires is not None and g.expires < (today or date.today()):
        return "expired"
    return g.state


def gift_json(g: GiftCertificate) -> dict:
    return {
        "code": g.code, "amount": f"{Decimal(g.amount):.2f}", "currency": g.currency,
        "expires": g.expires.isoformat() if g.expires else None, "customer_id": g.customer_id, "email": g.email,
        "campaign": g.campaign_id, "state": state_of(g), "issue": g.issue_id, "created": iso(g.created_at),
    }


def _query(campaign: int | None = None, customer: int | None = None):
    q = select(GiftCertificate).order_by(GiftCertificate.id)
    if campaign is not None:
        q = q.where(GiftCertificate.campaign_id == campaign)
    if customer is not None:
        q = q.where(GiftCertificate.customer_id == customer)
    return q


def gifts(session: Session, campaign: int | None = None, customer: int | None = None,
          state: str | None = None) -> Iterator[dict]:
    """Gift certificates as JSON records, streamed (an export of a whole campaign stays small in memory)."""
    for g in session.scalars(_query(campaign, customer).execution_options(yield_per=1000)):
        data = gift_json(g)
        if state is None or data["state"] == state:
            yield data


def find(session: Session, code_or_id: str) -> GiftCertificate:
    text = code_or_id.strip()
    conds = [GiftCertificate.code == normal_code(text)]
    if text.isdigit():
        conds.append(GiftCertificate.id == int(text))
    found = session.scalars(select(GiftCertificate).where(or_(*conds)).order_by(GiftCertificate.id)).first()
    if found is None:
        raise GiftError(f"no gift certificate {code_or_id!r}")
    return found


def void(session: Session, code_or_id: str) -> GiftCertificate:
    g = find(session, code_or_id)
    if g.state == "void":
        raise GiftError(f"gift certificate {g.code} is void already")
    g.state, g.voided_at = "void", utcnow()
    return g


def csv_lines(records: Iterator[dict]) -> Iterator[str]:
    """The export: a header line, then one line per certificate."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    for r in records:
        writer.writerow(["" if r[f] is None else r[f] for f in FIELDS])
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if buf.getvalue():
        yield buf.getvalue()
