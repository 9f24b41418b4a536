"""The thread stage: which issue a message belongs to.

In this order: our signed reply token in a recipient address (a rep's desk
token, on that rep's own mail, decides "desk": no issue); In-Reply-To,
then References (newest first), matching any stored interaction, inbound or
outbound; a bounce's original Message-ID; our subject tag, only when the
sender already takes part in that issue or is a rep; else a new issue in the
mailbox's category. Mail to a campaign's unsubscribe address (its token's
purpose) counts as automatic. Pure: it reads through the lookup, never writes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Protocol
from collections.abc import Sequence

from maild.tokens import TokenSigner
from maild.ingest.stages.records import Classification, CustomerMatch, ParsedMessage, ThreadDecision


log = logging.getLogger("maild.ingest")


class ThreadLookup(Protocol):
    def issues_by_message_ids(self, ids: Sequence[str]) -> dict[str, int]: ...

    def issue_status(self, issue_id: int) -> str | None: ...

    def live_issue(self, issue_id: int) -> int: ...  # a merged issue's pointer followed

    def is_participant(self, issue_id: int, customer_id: int | None, email: str) -> bool: ...


@dataclass(frozen=True)
class ThreadContext:
    signer: TokenSigner | None
    own_addresses: frozenset[str]
    tag_re: re.Pattern[str]
    category: str


def _by_token(
    msg: ParsedMessage, sender: CustomerMatch | None, ctx: ThreadContext, lookup: ThreadLookup
) -> ThreadDecision | None:
    if ctx.signer is None:
        return None
    token = ctx.signer.find(msg.recipients, ctx.own_addresses)
    if token is None:
        return None
    if token.issue_id is None:
        # A rep's desk address: that rep's own mail is desk mail (no issue yet);
        # anyone else's is threaded like any mail to the mailbox.
        if token.purpose == "desk" and sender is not None and sender.is_rep and sender.rep_id == token.rep_id:
            return ThreadDecision(None, "desk", ctx.category, token.rep_id, "desk")
        return None
    if lookup.issue_status(token.issue_id):
        return ThreadDecision(token.issue_id, "token", ctx.category, token.rep_id, token.purpose)
    return None


def _wanted(msg: ParsedMessage, cls: Classification) -> list[tuple[str, str]]:
    wanted = [(mid, "in-reply-to") for mid in msg.in_reply_to]
    wanted += [(mid, "references") for mid in reversed(msg.references)]
    if cls.bounce and cls.bounce.original_message_id:
        wanted.append((cls.bounce.original_message_id, "bounce"))
    return wanted


def parent_ids(msg: ParsedMessage, cls: Classification) -> list[str]:
    """The Message-IDs thread will look up, for a batch prefetch."""
    return [mid for mid, _ in _wanted(msg, cls)]


def _by_message_ids(msg: ParsedMessage, cls: Classification, lookup: ThreadLookup) -> ThreadDecision | None:
    wanted = _wanted(msg, cls)
    if not wanted:
        return None
    found = lookup.issues_by_message_ids([mid for mid, _ in wanted])
    for mid, reason in wanted:
        if mid in found:
            return ThreadDecision(found[mid], reason)
    return None


def _by_subject_tag(
    msg: ParsedMessage, sender: CustomerMatch | None, ctx: ThreadContext, lookup: ThreadLookup
) -> ThreadDecision | None:
    m = ctx.tag_re.search(msg.subject)
    if not m or sender is None:
        return None
    issue_id = int(m.group(1))
    if not lookup.issue_status(issue_id):
        return None
    if sender.is_rep or lookup.is_participant(issue_id, sender.customer_id, sender.email):
        return ThreadDecision(issue_id, "subject-tag")
    return None


def unsubscribe_request(decision: ThreadDecision, cls: Classification) -> Classification:
    """Mail to a campaign's signed unsubscribe address is a request to maild, not a conversation:
    automatic, so it reopens nothing, opens no issue and is acknowledged by nobody; the desk's
    hook records the opt-out on the issue's record."""
    if decision.token_purpose == "unsubscribe" and cls.auto is None:
        return replace(cls, auto="unsubscribe")
    return cls


def prove_rep(
    msg: ParsedMessage,
    sender: CustomerMatch | None,
    signer: TokenSigner | None,
    own_addresses: frozenset[str],
    rules,
    customer_by_key,
) -> CustomerMatch | None:
    """A From naming a rep counts only with a valid token issued to that rep;
    anyone else's mail, a forged rep From included, is customer mail."""
    if sender is None or not sender.is_rep:
        return sender
    token = signer.find(msg.recipients, own_addresses) if signer else None
    if token is not None and token.rep_id == sender.rep_id:
        return sender
    log.warning("rep From without that rep's reply token, taken as customer mail: from=%s token_rep=%s",
                sender.email, token.rep_id if token else None)
    return CustomerMatch(customer_by_key(rules.key(sender.email)), sender.email, sender.name)


def thread(
    msg: ParsedMessage,
    cls: Classification,
    sender: CustomerMatch | None,
    ctx: ThreadContext,
    lookup: ThreadLookup,
) -> ThreadDecision:
    decision = (
        _by_token(msg, sender, ctx, lookup)
        or _by_message_ids(msg, cls, lookup)
        or _by_subject_tag(msg, sender, ctx, lookup)
    )
    if decision is not None:
        # Mail for a merged issue lands on the issue it was merged into.
        issue_id = lookup.live_issue(decision.issue_id) if decision.issue_id is not None else None
        return ThreadDecision(
            issue_id, decision.reason, ctx.category, decision.token_rep_id, decision.token_purpose,
            lookup.issue_status(issue_id) if issue_id is not None else None,
        )
    return ThreadDecision(None, "new", ctx.category)
