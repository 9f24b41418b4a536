"""Signed reply tokens carried in subaddresses such as support+TOKEN@acme.test.

A token names an issue, optionally the rep it was issued to, and its purpose;
an HMAC over all three with the configured secret makes it unforgeable. A
rep's desk address carries a token of purpose "desk" that names the rep and
no issue (support+r3-d-....@acme.test). This module only signs and verifies:
what a valid token allows is decided elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

PURPOSES = {"r": "reply", "n": "note", "c": "customer", "u": "unsubscribe", "d": "desk"}
CODES = {v: k for k, v in PURPOSES.items()}
# Issue tokens start with "i<issue>-"; a desk token has no issue part and always a rep.
TOKEN_RE = re.compile(r"^(?:i(\d{1,12})-)?(?:r(\d{1,9})-)?([" + "".join(PURPOSES) + r"])-([a-z2-7]{16})$")


@dataclass(frozen=True)
class ReplyToken:
    issue_id: int | None  # None only for a desk token
    rep_id: int | None
    purpose: str  # reply, note, customer, unsubscribe (a campaign mail's List-Unsubscribe), desk


class TokenSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sig(self, issue_id: int | None, rep_id: int | None, code: str) -> str:
        msg = f"{'' if issue_id is None else issue_id}:{rep_id or ''}:{code}".encode()
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()
        return base64.b32encode(digest[:10]).decode().lower()

    def token(self, issue_id: int, rep_id: int | None, purpose: str) -> str:
        if purpose == "desk":
            raise ValueError("a desk token names no issue: use desk_address")
        code = CODES[purpose]
        rep = f"r{rep_id}-" if rep_id is not None else ""
        return f"i{issue_id}-{rep}{code}-{self._sig(issue_id, rep_id, code)}"

    def address(self, mailbox_address: str, issue_id: int, rep_id: int | None, purpose: str) -> str:
        local, _, domain = mailbox_address.partition("@")
        return f"{local}+{self.token(issue_id, rep_id, purpose)}@{domain}"

    def desk_address(self, mailbox_address: str, rep_id: int) -> str:
        """A rep's own desk address: bound to the rep, to no issue."""
        local, _, domain = mailbox_address.partition("@")
        return f"{local}+r{rep_id}-d-{self._sig(None, rep_id, 'd')}@{domain}"

    def verify(self, token: str) -> ReplyToken | None:
        m = TOKEN_RE.match(token.lower())
        if not m:
            return None
        issue_id = int(m.group(1)) if m.group(1) else None
        rep_id = int(m.group(2)) if m.group(2) else None
        desk = m.group(3) == "d"
        if desk != (issue_id is None) or (desk and rep_id is None):
            return None  # a desk token names a rep and no issue; every other token an issue
        if not hmac.compare_digest(self._sig(issue_id, rep_id, m.group(3)), m.group(4)):
            return None
        return ReplyToken(issue_id, rep_id, PURPOSES[m.group(3)])

    def find(self, recipients, own_addresses: frozenset[str]) -> ReplyToken | None:
        """The first valid token in a recipient address of one of our mailboxes."""
        for addr in recipients:
            local, _, domain = addr.lower().partition("@")
            base, plus, tag = local.partition("+")
            if plus and f"{base}@{domain}" in own_addresses:
                found = self.verify(tag)
                if found:
                    return found
        return None
