"""Signed self-test probes: the header that tells the intake a mail is our own probe.

A probe carries `X-Maild-Probe: TOKEN.SIGNATURE`, an HMAC over the token with
the deployment's secret, so nobody outside can make real mail vanish as a
probe or fake a healthy address. This module only signs and verifies; the
desk sends probes and records their return, the pipeline only recognises them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

HEADER = "X-Maild-Probe"
VALUE_RE = re.compile(r"^([a-z0-9]{8,40})\.([a-z2-7]{26})$")


def new_token() -> str:
    return secrets.token_hex(12)


class ProbeSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sig(self, token: str) -> str:
        digest = hmac.new(self._secret, b"maild-probe:" + token.encode(), hashlib.sha256).digest()
        return base64.b32encode(digest[:16]).decode().lower().rstrip("=")

    def sign(self, token: str) -> str:
        """The header value for a probe with this token."""
        return f"{token}.{self._sig(token)}"

    def verify(self, value: str | None) -> str | None:
        """The probe's token when the header value is ours, else None."""
        m = VALUE_RE.match((value or "").strip().lower())
        if not m or not hmac.compare_digest(self._sig(m.group(1)), m.group(2)):
            return None
        return m.group(1)
