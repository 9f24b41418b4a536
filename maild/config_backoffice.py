"""Config sections of the back office: the web console, reports and digests, bulk mail.

Kept beside config.py (which composes them into Settings) so that file stays
readable; the same rules hold (config_base.py). Imports nothing else of maild's.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from maild.config_base import Strict, check_addresses, check_hostport


class WebConfig(Strict):
    """The web console (maild/web): off unless `listen` is set."""

    listen: str | None = None  # host:port of the console, /metrics and /healthz; loopback unless you mean it
    public_url: str | None = None  # the console's address as reps reach it, for links in mail; default http://listen
    secure_cookies: bool = False  # mark the session cookie Secure: set when the console is reached over TLS
    session_hours: float = Field(default=12.0, gt=0)  # a signed-in rep stays signed in this long
    signin_minutes: float = Field(default=15.0, gt=0, le=60)  # a mailed sign-in link works this long, once
    mailbox: str | None = None  # the mailbox sign-in links are sent from; default the first

    _listen = field_validator("listen")(lambda v: v if v is None else check_hostport(v))

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", v):
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v.rstrip("/") if v else v


class BulkConfig(Strict):
    """Campaigns (`maild bulk send`)."""

    mailbox: str | None = None  # the mailbox campaigns are sent from; default the first
    rate: int = Field(default=600, gt=0)  # mails per minute when `bulk send` gives no --rate


ReportName = Literal["issue-types", "reps", "resources", "turnaround", "backlog", "channels"]
REPORT_NAMES: tuple[ReportName, ...] = ("issue-types", "reps", "resources", "turnaround", "backlog", "channels")
TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class ReportsConfig(Strict):
    """Targets the turnaround report and the key statistics measure against."""

    first_response_hours: float = Field(default=24.0, gt=0)
    resolution_hours: float = Field(default=72.0, gt=0)


class DigestConfig(Strict):
    """A mailed digest: key statistics, the top rows and charts of some reports, on a schedule."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    recipients: tuple[str, ...] = Field(min_length=1)
    every: Literal["daily", "weekly"] = "daily"
    at: str = "07:00"  # UTC, HH:MM; weekly digests go on Mondays
    reports: tuple[ReportName, ...] = REPORT_NAMES
    top: int = Field(default=10, gt=0, le=100)  # rows of each report in the mail
    mailbox: str | None = None  # sent from this mailbox's address (default: the first mailbox)
    console_url: str | None = Field(default=None, pattern=r"^https?://\S+$")

    _recipients = field_validator("recipients")(lambda v: check_addresses(v))

    @field_validator("at")
    @classmethod
    def _at(cls, v: str) -> str:
        if not TIME_RE.match(v):
            raise ValueError(f"{v!r} is not a time of day HH:MM (UTC)")
        return v
