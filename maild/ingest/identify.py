"""The identify stage: who sent this mail.

A rep (by address or alias), one of our own mailbox addresses, an existing
identification record by any of its addresses, or a new record to create from
what the mail gives. Pure: reads through a lookup callable, writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from ..addresses import AddressRules
from .records import Classification, CustomerMatch, ParsedMessage


@dataclass(frozen=True)
class IdentifyContext:
    rules: AddressRules
    own_addresses: frozenset[str]
    reps_by_address: Mapping[str, int]  # lowercased address or alias -> rep id


def identify(
    msg: ParsedMessage,
    classification: Classification,
    ctx: IdentifyContext,
    customer_by_key: Callable[[str], int | None],
) -> CustomerMatch | None:
    """None when the mail names no usable sender (no From address at all)."""
    sender = msg.from_
    if sender is None:
        return None
    email = sender.email.strip()
    lowered = email.lower()
    if lowered in ctx.own_addresses or ctx.rules.key(email) in ctx.own_addresses:
        return CustomerMatch(None, email, sender.name, own_address=True)
    rep_id = ctx.reps_by_address.get(lowered)
    if rep_id is not None:
        return CustomerMatch(None, email, sender.name, is_rep=True, rep_id=rep_id)
    return CustomerMatch(customer_by_key(ctx.rules.key(email)), email, sender.name)
