"""AUTH and STARTTLS for the SMTP edge, checked against the config at start.

Kept apart from smtp.py, which is about transactions: here are only who may
authenticate, how a password is compared, and the TLS context.
"""

from __future__ import annotations

import hmac
import logging
import os
import ssl
from collections.abc import Sequence
from ipaddress import ip_address

from aiosmtpd.smtp import AuthResult, LoginPassword

from maild.config import ConfigError, Settings
from maild.config_base import split_hostport

log = logging.getLogger("maild.smtp")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The STARTTLS context when tls_cert and tls_key are set; a ConfigError when they cannot be loaded."""
    cfg = settings.smtp
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"smtp.tls_cert/smtp.tls_key: cannot load: {exc}") from None
    return ctx


def authenticator(users: dict[str, str]):
    """AUTH PLAIN/LOGIN against the configured users, compared in constant time."""

    def check(server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = False
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            want = users.get(login, "")
            ok = bool(want) & hmac.compare_digest(want.encode(), auth_data.password)
            log.info("auth user=%s peer=%s ok=%s", login, session.peer[0] if session.peer else "-", ok)
        return AuthResult(success=ok, handled=False)

    return check


def auth_users(settings: Settings, listeners: Sequence[tuple[str, str]]) -> dict[str, str] | None:
    """The users AUTH accepts (None: no AUTH), once the rules for them hold on every (proto, address)."""
    users = _auth_users(settings)
    if users is not None and not settings.smtp.auth_require_tls:
        for proto, address in listeners:
            if not _loopback(address):
                raise ConfigError(f"smtp.auth_require_tls = false needs a loopback address; {proto} listens on {address}")
    return users


def _auth_users(settings: Settings) -> dict[str, str] | None:
    cfg = settings.smtp
    if cfg.auth_users_env is None:
        if cfg.auth_required:
            raise ConfigError("smtp.auth_required needs smtp.auth_users_env")
        return None
    value = os.environ.get(cfg.auth_users_env, "")
    users = dict(p.strip().split(":", 1) for p in value.split(",") if ":" in p)
    if not users:
        raise ConfigError(
            f"environment variable {cfg.auth_users_env} (smtp.auth_users_env) must hold user:password[,...]"
        )
    return users


def _loopback(address: str) -> bool:
    host, _ = split_hostport(address)
    try:
        return host == "localhost" or ip_address(host).is_loopback
    except ValueError:
        return False
