"""The identify stage: who sent this mail.

A rep (by address or alias), one of our own mailbox addresses, else the
identification record that owns the sender's address (a registered user's or
not; never a merged record), else a new record to create from what the mail
gives. The sender is From, except for a configured web-form relay, where the
customer is the Reply-To: Reply-To is trivially forged, so nobody else gets to
choose their identity with it. Pure: reads through a lookup callable, writes
nothing, and costs one indexed lookup per message.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from collections.abc import Callable, Mapping

from maild.addresses import AddressRules
from maild.ingest.stages.records import Address, Classification, CustomerMatch, ParsedMessage

# Comparison key -> the live (never merged) record owning that address, or None.
CustomerByKey = Callable[[str], int | None]


@dataclass(frozen=True)
class IdentifyContext:
    rules: AddressRules
    own_addresses: frozenset[str]
    reps_by_address: Mapping[str, int]  # lowercased address or alias -> rep id
    relay_senders: frozenset[str] = frozenset()  # comparison keys of web-form relays


def _is_own(email: str, ctx: IdentifyContext) -> bool:
    return email.lower() in ctx.own_addresses or ctx.rules.key(email) in ctx.own_addresses


def relayed_customer(msg: ParsedMessage, ctx: IdentifyContext) -> Address | None:
    """The customer a web-form relay writes for: its first usable Reply-To.

    None unless From is a configured relay sender and Reply-To names someone
    other than the relay or one of our own addresses.
    """
    sender = msg.from_
    if sender is None or not ctx.relay_senders or ctx.rules.key(sender.email) not in ctx.relay_senders:
        return None
    for addr in msg.reply_to:
        email = addr.email.strip()
        if "@" in email and ctx.rules.key(email) not in ctx.relay_senders and not _is_own(email, ctx):
            return addr
    return None


def relayed_classification(msg: ParsedMessage, cls: Classification, ctx: IdentifyContext) -> Classification:
    """A relayed message is the customer's own mail, not automatic mail.

    The relay's address (noreply@, a bulk-mail header of the site's mailer)
    says nothing about the person who filled in the form. Bounces stay bounces.
    """
    if cls.auto is None or cls.bounce is not None or relayed_customer(msg, ctx) is None:
        return cls
    return replace(cls, auto=None)


def sender_key(msg: ParsedMessage, ctx: IdentifyContext) -> str | None:
    """The comparison key of the address identify will look up, for a batch prefetch."""
    if msg.from_ is None:
        return None
    return ctx.rules.key((relayed_customer(msg, ctx) or msg.from_).email.strip())


def identify(
    msg: ParsedMessage,
    classification: Classification,
    ctx: IdentifyContext,
    customer_by_key: CustomerByKey,
) -> CustomerMatch | None:
    """None when the mail names no usable sender (no From address at all)."""
    if msg.from_ is None:
        return None
    sender = relayed_customer(msg, ctx) or msg.from_
    email = sender.email.strip()
    if _is_own(email, ctx):
        return CustomerMatch(None, email, sender.name, own_address=True)
    rep_id = ctx.reps_by_address.get(email.lower())
    if rep_id is not None:
        return CustomerMatch(None, email, sender.name, is_rep=True, rep_id=rep_id)
    return CustomerMatch(customer_by_key(ctx.rules.key(email)), email, sender.name)
