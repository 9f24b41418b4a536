"""Connecting and logging in to an IMAP server, and saying in one line what went wrong.

TLS, STARTTLS or plain; password LOGIN or XOAUTH2 (which Gmail and Microsoft
365 require), the secret read from the environment variable the config names.
Certificates are always verified. It never logs or returns a secret.
"""

from __future__ import annotations

import os
import re
import ssl

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from maild.config import ImapConfig
from maild.db import is_transient

TIMEOUT = SocketTimeout(connect=30.0, read=120.0)
BYTES_REPR = re.compile(r"""^b(['"])(.*)\1$""")


class ImapSetupError(Exception):
    """Something the operator must fix before this mailbox can connect."""


def _secret(cfg: ImapConfig) -> str:
    name = cfg.oauth2_token_env or cfg.password_env
    value = os.environ.get(name or "")
    if not value:
        key = "oauth2_token_env" if cfg.oauth2_token_env else "password_env"
        raise ImapSetupError(f"environment variable {name} (imap.{key}) is not set")
    return value


def open_client(cfg: ImapConfig) -> IMAPClient:
    """A logged-in client: TLS, STARTTLS or plain; password LOGIN or XOAUTH2."""
    secret = _secret(cfg)
    context = ssl.create_default_context()
    client = IMAPClient(cfg.host, cfg.port, ssl=cfg.tls == "tls",
                        ssl_context=context if cfg.tls == "tls" else None, timeout=TIMEOUT)
    try:
        if cfg.tls == "starttls":
            client.starttls(context)
        if cfg.oauth2_token_env:
            client.oauth2_login(cfg.user, secret)
        else:
            client.login(cfg.user, secret)
    except BaseException:
        drop(client)
        raise
    return client


def drop(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except (OSError, IMAPClientError):
        pass


def explain(exc: BaseException, cfg: ImapConfig) -> str:
    """One line an operator can act on (database errors carry SQL on further lines: dropped)."""
    text = _explain(exc, cfg).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _explain(exc: BaseException, cfg: ImapConfig) -> str:
    where = f"{cfg.user}@{cfg.host}:{cfg.port}"
    if isinstance(exc, IMAPClientError) and (m := BYTES_REPR.match(str(exc))):
        exc = type(exc)(m.group(2))  # the server's words, not a Python bytes repr
    if isinstance(exc, LoginError):
        return f"login failed for {where}: {exc}"
    if isinstance(exc, ImapSetupError):
        return str(exc)
    if isinstance(exc, ssl.SSLError):
        return f"TLS with {cfg.host}:{cfg.port} failed: {exc}"
    if isinstance(exc, (OSError, IMAPClientAbortError, EOFError)):
        return f"connection to {cfg.host}:{cfg.port} failed or was lost: {str(exc) or type(exc).__name__}"
    if isinstance(exc, IMAPClientError):
        return f"the server at {cfg.host}:{cfg.port} refused a command: {exc}"
    if is_transient(exc):
        return f"the database is unavailable: {exc}"
    return f"unexpected error: {type(exc).__name__}: {exc}"
