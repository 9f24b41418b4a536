"""The one configuration file: a TOML document validated at load.

Unknown keys, wrong types and missing values are errors naming the file, the
key and the problem. Secrets are never values here, only the names of the
environment variables that hold them.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from maild.config_backoffice import BulkConfig, DigestConfig, ReportsConfig, WebConfig
from maild.config_base import (
    Strict, check_address, check_addresses, check_env_name, check_hostport,
)
from maild.config_desk import (
    CalendarConfig, CannedConfig, CategoryConfig, PicklistConfig, SelftestConfig, SlaConfig, SpellingConfig,
    TurnaroundConfig, check_references,
)

class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


def _check_database_url(value: str) -> str:
    from sqlalchemy.engine import make_url  # the parser the engine will use
    from sqlalchemy.exc import ArgumentError

    try:
        scheme = make_url(value).get_backend_name()
    except ArgumentError:
        raise ValueError("not a database URL (sqlite:///PATH or postgresql://USER@HOST/DB)") from None
    if scheme not in ("sqlite", "postgresql"):
        raise ValueError(f"{scheme!r} databases are not supported: use sqlite:///PATH or postgresql://USER@HOST/DB")
    return value


class DatabaseConfig(Strict):
    url: str = "sqlite:///maild.db"

    _url = field_validator("url")(_check_database_url)


class SmtpConfig(Strict):
    listen: str = "127.0.0.1:8025"
    lmtp_listen: str | None = None
    max_message_size: int = Field(default=25 * 1024 * 1024, gt=0)
    max_backlog: int = Field(default=1000, gt=0)
    tls_cert: str | None = None
    tls_key: str | None = None
    auth_users_env: str | None = None  # env var holding "user:password[,user:password...]"
    auth_require_tls: bool = True
    auth_required: bool = False  # every transaction must AUTH first (a submission-only listener)
    store_timeout: float = Field(default=5.0, gt=0)  # seconds a store may wait on the database before 451
    max_sessions: int = Field(default=100, gt=0)  # concurrent SMTP sessions; the next one gets 421
    max_sessions_per_ip: int = Field(default=20, gt=0)  # ... from one client address (IPv6: one /64)
    max_lmtp_sessions: int = Field(default=50, gt=0)  # concurrent LMTP sessions, a pool of their own
    session_timeout: float = Field(default=600.0, gt=0)  # seconds from connect to 421, whatever is sent
    max_idle_commands: int = Field(default=20, gt=0)  # NOOP, RSET, HELO/EHLO, VRFY... between two messages
    transaction_timeout: float = Field(default=300.0, gt=0)  # seconds from MAIL FROM to the end of DATA
    spool_threshold: int = Field(default=1024 * 1024, gt=0)  # bytes of a message in memory before a temp file
    max_data_memory: int = Field(default=100 * 1024 * 1024, gt=0)  # bytes of received mail held for stores at once

    _listen = field_validator("listen", "lmtp_listen")(lambda v: v if v is None else check_hostport(v))
    _env = field_validator("auth_users_env")(check_env_name)

    @model_validator(mode="after")
    def _tls_pair(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self


class DaemonConfig(Strict):
    drain_batch: int = Field(default=4, gt=0)  # messages per pipeline transaction in `maild run`, when idle
    max_drain_batch: int = Field(default=200, gt=0)  # ... growing up to this many with the backlog
    drain_interval: float = Field(default=5.0, gt=0)  # seconds between looks for mail from other paths
    shutdown_grace: float = Field(default=10.0, gt=0)  # seconds SIGTERM waits for stores and the batch in hand


LOCAL_RELAYS = ("maildir:", "mbox:")


def _check_relay(value: str) -> str:
    """host:port, or maildir:PATH / mbox:PATH (a local folder or file instead of a relay)."""
    if value.startswith(LOCAL_RELAYS):
        if not value.partition(":")[2].strip():
            raise ValueError(f"{value!r} names no path")
        return value
    try:
        return check_hostport(value)
    except ValueError:
        raise ValueError(f"{value!r} is not host:port, maildir:PATH or mbox:PATH") from None


class OutboundConfig(Strict):
    relay: str = "127.0.0.1:25"  # or maildir:PATH / mbox:PATH, relative to the working directory
    connections: int = Field(default=8, gt=0, le=64)  # relay conversations the sender holds in parallel
    starttls: bool = False
    user_env: str | None = None
    password_env: str | None = None
    message_id_domain: str | None = None  # default: "maild." + the first mailbox's domain
    timeout: float = Field(default=30.0, gt=0)  # seconds per relay conversation step
    send_interval: float = Field(default=5.0, gt=0)  # seconds between outbox runs in the daemon
    retry_base: float = Field(default=60.0, gt=0)  # first retry after a 4xx; doubles each time
    retry_max: float = Field(default=3600.0, gt=0)  # longest wait between two attempts
    deadline_hours: float = Field(default=48.0, gt=0)  # give up (failed) after this long
    sending_timeout: float = Field(default=300.0, gt=0)  # a sender's lease on the rows it holds; renewed while it works
    max_auto_per_recipient: int = Field(default=10, ge=0)  # automatic mails per address per 24 h
    failing_days: float = Field(default=7.0, ge=0)  # no automatic mail to a bounced address for this long
    templates_dir: str = "templates"  # admin overrides, relative to the config file's folder
    # Customer attachments carried by a rep's notification, in bytes all together; the rest are
    # listed with their sizes and fetched with #attachments.
    notify_attachments_max: int = Field(default=10 * 1024 * 1024, ge=0)
    # A rep's reply whose attachments total more than this, in bytes, is not sent; the rep is told.
    max_attachment_size: int = Field(default=20 * 1024 * 1024, gt=0)

    _relay = field_validator("relay")(_check_relay)
    _env = field_validator("user_env", "password_env")(check_env_name)


class SecurityConfig(Strict):
    secret_env: str = "MAILD_SECRET"

    _env = field_validator("secret_env")(check_env_name)


class ThreadingConfig(Strict):
    # Subject tags look like "[#123]", or "[PREFIX #123]" when a prefix is set,
    # so another system's "[#123]" tags never match ours.
    tag_prefix: str = ""

    @field_validator("tag_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9_.-]{1,20}", v):
            raise ValueError("tag_prefix must be 1-20 letters, digits, '.', '_' or '-'")
        return v


class IngestConfig(Strict):
    max_message_size: int = Field(default=50 * 1024 * 1024, gt=0)
    fold_plus_addresses: bool = True  # customer+tag@x matches customer@x
    case_sensitive_local_part: bool = False
    # Web-form relays: mail From one of these is a customer's message, and its
    # Reply-To names the customer. For any other sender From wins.
    relay_senders: tuple[str, ...] = ()
    # Budget per message for parse and classify, in a worker process that is stopped
    # past it; the message goes to quarantine (stage parse, too-slow / too-large).
    parse_timeout: float = Field(default=20.0, gt=0)  # seconds
    parse_memory: int = Field(default=1024 * 1024 * 1024, ge=16 * 1024 * 1024)  # bytes beyond the worker's own

    _relays = field_validator("relay_senders")(lambda v: check_addresses(v))


class ImapConfig(Strict):
    host: str
    port: int = Field(default=993, gt=0, lt=65536)
    tls: Literal["none", "starttls", "tls"] = "tls"
    user: str
    password_env: str | None = None
    oauth2_token_env: str | None = None
    folder: str = "INBOX"
    poll_interval: float = Field(default=60.0, gt=0)
    processed_folder: str | None = "maild-processed"
    keep_on_server: bool = False
    oversize_folder: str = "maild-oversize"  # where mail over ingest.max_message_size is moved, unstored

    _env = field_validator("password_env", "oauth2_token_env")(check_env_name)

    @model_validator(mode="after")
    def _credentials(self):
        if (self.password_env is None) == (self.oauth2_token_env is None):
            raise ValueError("exactly one of password_env and oauth2_token_env is required")
        return self


class MailboxConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    address: str
    aliases: tuple[str, ...] = ()
    category: str = "uncategorized"
    display_name: str | None = None
    acknowledge: bool = True  # send the customer an acknowledgement for a new issue
    signature: str = ""  # appended to mail from this mailbox
    reps: tuple[str, ...] = ()  # rep emails notified for this mailbox (default: every rep)
    language: str = "en"  # spell-check language of replies from this mailbox
    reopen_days: float | None = None  # a reply to an issue closed longer ago opens a new linked issue
    # A pending issue the customer has not answered for this many days is closed (and the
    # customer told how to reopen it); None: pending issues wait for ever.
    pending_close_days: float | None = Field(default=None, gt=0)
    imap: ImapConfig | None = None

    _addr = field_validator("address")(check_address)

    _aliases = field_validator("aliases")(lambda v: check_addresses(v))

    @property
    def all_addresses(self) -> tuple[str, ...]:
        return (self.address.lower(), *(a.lower() for a in self.aliases))


class RepConfig(Strict):
    name: str
    email: str
    aliases: tuple[str, ...] = ()
    short_name: str | None = Field(default=None, pattern=r"^[^\s@]{1,50}$")  # `#assign SHORT`: one word

    _addr = field_validator("email")(check_address)

    _aliases = field_validator("aliases")(lambda v: check_addresses(v))

    @property
    def all_addresses(self) -> tuple[str, ...]:
        return (self.email.lower(), *(a.lower() for a in self.aliases))


class Settings(Strict):
    database: DatabaseConfig = DatabaseConfig()
    smtp: SmtpConfig = SmtpConfig()
    daemon: DaemonConfig = DaemonConfig()
    outbound: OutboundConfig = OutboundConfig()
    security: SecurityConfig = SecurityConfig()
    threading: ThreadingConfig = ThreadingConfig()
    ingest: IngestConfig = IngestConfig()
    mailbox: tuple[MailboxConfig, ...] = Field(min_length=1)
    rep: tuple[RepConfig, ...] = ()
    category: tuple[CategoryConfig, ...] = ()
    canned: tuple[CannedConfig, ...] = ()
    picklist: tuple[PicklistConfig, ...] = ()
    spelling: SpellingConfig = SpellingConfig()
    web: WebConfig = WebConfig()
    bulk: BulkConfig = BulkConfig()
    reports: ReportsConfig = ReportsConfig()
    digest: tuple[DigestConfig, ...] = ()
    calendar: tuple[CalendarConfig, ...] = ()
    turnaround: tuple[TurnaroundConfig, ...] = ()
    sla: SlaConfig = SlaConfig()
    selftest: SelftestConfig = SelftestConfig()

    _source_dir: str = PrivateAttr(default=".")

    @property
    def templates_dir(self) -> Path:
        """The admin's template folder: templates there override the shipped ones."""
        return Path(self._source_dir) / self.outbound.templates_dir

    @model_validator(mode="after")
    def _consistent(self):
        names = [m.name for m in self.mailbox]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"mailbox names must be unique: {sorted(dup)}")
        addrs = [a for m in self.mailbox for a in m.all_addresses]
        dup = {a for a in addrs if addrs.count(a) > 1}
        if dup:
            raise ValueError(f"a mailbox address or alias is configured twice: {sorted(dup)}")
        rep_emails = {r.email.lower() for r in self.rep}
        owners: tuple[MailboxConfig | CategoryConfig, ...] = (*self.mailbox, *self.category)
        for owner in owners:
            unknown = [e for e in owner.reps if e.lower() not in rep_emails]
            if unknown:
                raise ValueError(f"{owner.name!r} lists reps that no [[rep]] defines: {unknown}")
        if self.bulk.mailbox is not None and self.bulk.mailbox not in names:
            raise ValueError(f"bulk.mailbox names {self.bulk.mailbox!r}, which no [[mailbox]] defines")
        if self.web.mailbox is not None and self.web.mailbox not in names:
            raise ValueError(f"web.mailbox names {self.web.mailbox!r}, which no [[mailbox]] defines")
        lists = [p.name for p in self.picklist]
        if len(set(lists)) != len(lists):
            raise ValueError(f"picklist names must be unique: {sorted({n for n in lists if lists.count(n) > 1})}")
        known = {"uncategorized", *(c.name for c in self.category)}
        check_references(self.calendar, self.turnaround, self.sla, set(names), known)
        for m in self.mailbox:
            if m.category not in known:
                raise ValueError(
                    f"mailbox {m.name!r} names category {m.category!r}, which no [[category]] defines"
                )
        return self

    @model_validator(mode="after")
    def _digests(self):
        names = [d.name for d in self.digest]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"digest names must be unique: {sorted(dup)}")
        mailboxes = {m.name for m in self.mailbox}
        for d in self.digest:
            if d.mailbox is not None and d.mailbox not in mailboxes:
                raise ValueError(f"digest {d.name!r} names mailbox {d.mailbox!r}, which no [[mailbox]] defines")
        return self

    def mailbox_named(self, name: str) -> MailboxConfig:
        for m in self.mailbox:
            if m.name == name:
                return m
        raise ConfigError(f"mailbox: no mailbox named {name!r} (configured: {', '.join(m.name for m in self.mailbox)})")

    @property
    def own_addresses(self) -> frozenset[str]:
        return frozenset(a for m in self.mailbox for a in m.all_addresses)

    @property
    def message_id_domain(self) -> str:
        # A subdomain of our own, so the Message-IDs reps' mail programs make
        # under the company domain are never mistaken for maild's.
        return self.outbound.message_id_domain or "maild." + self.mailbox[0].address.rpartition("@")[2].lower()

    def secret(self) -> bytes:
        """The signing secret from the environment; an error when unset."""
        value = os.environ.get(self.security.secret_env, "")
        if len(value) < 16:
            raise ConfigError(
                f"environment variable {self.security.secret_env} (security.secret_env) "
                "must hold the signing secret, at least 16 characters"
            )
        return value.encode()


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def parse_settings(data: dict, source: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _key_path(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "missing value"
            elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
                msg = str(err["ctx"]["error"])  # our own validator's words, without pydantic's prefix
            lines.append(f"{source}: {key}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load(path: str | os.PathLike | None) -> Settings:
    """Load and validate the config file at path (or $MAILD_CONFIG)."""
    if path is None:
        path = os.environ.get("MAILD_CONFIG")
    if not path:
        raise ConfigError("no config file: pass -c FILE or set MAILD_CONFIG")
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    settings = parse_settings(data, str(p))
    settings._source_dir = str(p.resolve().parent)
    return settings
