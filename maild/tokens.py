"""Signed reply tokens carried in subaddresses such as support+TOKEN@acme.test.

A token names an issue, optionally the rep it was issued to, and its purpose;
an HMAC over all three with the configured secret makes it unforgeable. This
module only signs and verifies: what a valid token allows is decided elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

PURPOSES = {"r": "reply", "n": "note", "c": "customer", "u": "unsubscribe"}
CODES = {v: k for k, v in PURPOSES.items()}
TOKEN_RE = re.compile(r"^i(\d{1,12})-(?:r(\d{1,9})-)?([" + "".join(PURPOSES) + r"])-([a-z2-7]{16})$")


@dataclass(frozen=True)
class ReplyToken:
    issue_id: int
    rep_id: int | None
    purpose: str  # reply, note, customer, unsubscribe (a campaign mail's List-Unsubscribe)


class TokenSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sig(self, issue_id: int, rep_id: int | None, code: str) -> str:
        msg = f"{issue_id}:{rep_id or ''}:{code}".encode()
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()
        return base64.b32encode(digest[:10]).decode().lower()

    def token(self, issue_id: int, rep_id: int | None, purpose: str) -> str:
        code = CODES[purpose]
        rep = f"r{rep_id}-" if rep_id is not None else ""
        return f"i{issue_id}-{rep}{code}-{self._sig(issue_id, rep_id, code)}"

    def address(self, mailbox_address: str, issue_id: int, rep_id: int | None, purpose: str) -> str:
        local, _, domain = mailbox_address.partition("@")
        return f"{local}+{self.token(issue_id, rep_id, purpose)}@{domain}"

    def verify(self, token: str) -> ReplyToken | None:
        m = TOKEN_RE.match(token.lower())
        if not m:
            return None
        issue_id, rep_id = int(m.group(1)), int(m.group(2)) if m.group(2) else None
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
