"""`maild run`: the daemon in the foreground, until SIGTERM or SIGINT."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

import click

from maild.config import ConfigError, Settings, load
from maild.db import is_transient
from maild.cli import EX_CONFIG, EX_TEMPFAIL, config_message, main, secret_advice, settle, with_settings

EX_OSERR = 71

log = logging.getLogger("maild.daemon")


def _log_levels() -> None:
    """One line per accepted, refused and processed message; the libraries' chatter
    (aiosmtpd, APScheduler, and Alembic: see setup_logging) only with -vv."""
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    if root.level > logging.DEBUG:
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: every command line
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # every job run


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the config keys whose values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [c for k in keys for c in config_changes(old.get(k), new.get(k), f"{prefix}{'.' if prefix else ''}{k}")]
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and len(old) == len(new) and \
            all(isinstance(x, dict) for x in (*old, *new)):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in config_changes(a, b, f"{prefix}[{i}]")]
    return [] if old == new else [prefix]


def check_reload(settings: Settings, config_path: str | None) -> None:
    """SIGHUP: re-read and validate the config, and say what a restart would change.

    Nothing is applied: listeners, the database and the wiring are built once,
    at start, and swapping them under live sessions is not worth its risks.
    """
    if not config_path:
        log.warning("SIGHUP ignored: maild applies its config only at start")
        return
    try:
        new = load(config_path)
    except ConfigError as exc:
        log.error("SIGHUP: %s is invalid; still running on the config it started with:\n%s", config_path, exc)
        return
    changed = config_changes(settings.model_dump(), new.model_dump())
    if changed:
        log.warning("SIGHUP: config changed (%s); maild applies its config only at start: "
                    "run `maild check`, then restart", ", ".join(changed))
    else:
        log.info("SIGHUP: config valid and unchanged")


@main.command("run")
@with_settings
def run(settings: Settings) -> None:
    """Run the daemon: SMTP (and LMTP) listeners, the drain worker, periodic jobs.

    Logs to stderr. SIGTERM or SIGINT: stop accepting, finish the stores in
    progress, exit 0 (unprocessed mail is processed at the next start).
    SIGHUP: re-read and validate the config and log what a restart would change.
    """
    from maild.daemon import build_daemon  # the daemon's imports only for `run`

    _log_levels()
    config_path = click.get_current_context().meta.get("maild.config_path")
    advice = secret_advice(settings)
    if advice:
        log.warning("%s", advice)
    try:
        daemon = build_daemon(settings, on_hup=functools.partial(check_reload, settings, config_path))
        settle()  # the daemon's parts live until it stops
        sys.exit(daemon.run())
    except ConfigError as exc:
        click.echo(f"maild: {config_message(exc, config_path)}", err=True)
        sys.exit(EX_CONFIG)
    except OSError as exc:
        click.echo(f"maild: cannot listen: {exc}", err=True)
        sys.exit(EX_OSERR)
    except Exception as exc:
        if is_transient(exc):
            click.echo(f"maild: database unavailable, not started: {exc}", err=True)
            sys.exit(EX_TEMPFAIL)
        raise
