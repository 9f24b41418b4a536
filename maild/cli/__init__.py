"""The `maild` command line: thin commands over the composition root.

Every expected failure ends in one line on stderr and a sysexits status, never
a traceback: a config error 78 (the file, the key, the problem), a locked or
unreachable database 75, a refused change 1. `-c` and `-v` work before or
after the command name.
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click

from maild.config import ConfigError, Settings, load

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

EX_DATAERR = 65
EX_TEMPFAIL = 75
EX_CONFIG = 78

# Seconds a read-only command waits for a locked database before exit 75.
READ_LOCK_WAIT = 3.0
# Reply tokens are signed with this secret; shorter ones are guessable offline.
SECRET_MIN_LENGTH = 32

CONTEXT = {"help_option_names": ["-h", "--help"]}

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: $MAILD_CONFIG).",
)
verbose_option = click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def setup_logging(verbosity: int) -> None:
    """WARNING by default, INFO with -v, DEBUG with -vv; Alembic's chatter only with -vv."""
    level = logging.WARNING - 10 * min(verbosity, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)
    logging.getLogger("alembic").setLevel(logging.NOTSET if verbosity >= 2 else logging.WARNING)


_whole_process = False  # set by process_main: maild is this process, not a caller's library


def process_main() -> None:
    """The `maild` command as a process of its own (the console script, `python -m maild`)."""
    global _whole_process
    _whole_process = True
    gc.disable()  # loading modules makes no garbage worth a collection: on again in settle()
    main(prog_name="maild")


def settle() -> None:
    """What exists now lives until the process ends: the loaded modules, the
    config, the built app. Frozen out of the cyclic collector (gc.freeze), no
    collection walks it again, not even the full ones at exit (about 0.1-0.2 s
    of every `maild` process), and workers forked after it share its pages.
    Only in maild's own process: a caller that runs the commands in its own
    (tests, a host program) keeps its collector whole."""
    if _whole_process:
        gc.freeze()
        gc.enable()


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"maild: {message}", err=True)
    sys.exit(code)


def config_message(exc: ConfigError, path: str | None) -> str:
    """A config error always names the file: errors found after loading don't know it."""
    text = str(exc)
    return text if not path or text.startswith(path) else f"{path}: {text}"


def _options(ctx: click.Context, config_path: str | None, verbose: int) -> tuple[str | None, int]:
    """-c given after the command wins over one given before it; -v counts add up."""
    path = config_path or ctx.meta.get("maild.config") or os.environ.get("MAILD_CONFIG") or None
    verbosity = verbose + ctx.meta.get("maild.verbose", 0)
    ctx.meta["maild.config_path"] = path
    return path, verbosity


def _guarded(fn: Callable[..., Any], path: str | None, settings: Settings | None, kwargs: dict) -> Any:
    from maild import db  # SQLAlchemy: not loaded for --help

    try:
        return fn(settings, **kwargs)
    except ConfigError as exc:
        _fail(config_message(exc, path), EX_CONFIG)
    except Exception as exc:
        if not db.unavailable(exc):
            raise
        where = db.display_url(settings.database.url) if settings else "database"
        _fail(f"database {where} unavailable (locked or unreachable), try again later: {db.first_line(exc)}",
              EX_TEMPFAIL)


def _with_config(fn: Callable[..., Any], optional: bool) -> Callable[..., Any]:
    @config_option
    @verbose_option
    @functools.wraps(fn)
    def wrapper(config_path: str | None, verbose: int, **kwargs: Any) -> Any:
        path, verbosity = _options(click.get_current_context(), config_path, verbose)
        setup_logging(verbosity)
        settings = None
        if path or not optional:
            try:
                settings = load(path)
            except ConfigError as exc:
                _fail(str(exc), EX_CONFIG)
        settle()
        return _guarded(fn, path, settings, kwargs)

    return wrapper


def with_settings(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Load the config named by -c or $MAILD_CONFIG; expected failures exit with one line."""
    return _with_config(fn, optional=False)


def with_optional_settings(fn: Callable[..., Any]) -> Callable[..., Any]:
    """As with_settings, but without -c or $MAILD_CONFIG the command gets None (built-in defaults)."""
    return _with_config(fn, optional=True)


@contextmanager
def reading(settings: Settings) -> Iterator[Session]:
    """One read transaction for a read-only command. It never takes the write
    lock, and waits READ_LOCK_WAIT seconds at most for a database locked
    against readers (then the command exits 75)."""
    from maild import db

    engine = db.make_engine(settings.database.url, lock_wait=READ_LOCK_WAIT, write_first=False)
    try:
        db.migrate(engine)  # a no-op on a current schema
        with db.session_factory(engine)() as session, session.begin():
            yield session
    finally:
        engine.dispose()


def secret_advice(settings: Settings) -> str | None:
    """What is wrong with the reply-token secret, and how to fix it; None when it is fine."""
    name = settings.security.secret_env
    value = os.environ.get(name, "")
    fix = (f"set {name} to a random string of at least {SECRET_MIN_LENGTH} characters, e.g. "
           f"export {name}=\"$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\"")
    if not value:
        return (f"{name} is not set: reply tokens are off, so reps' emailed replies and "
                f"token threading do not work; {fix}")
    if len(value) < SECRET_MIN_LENGTH:
        state = "reply tokens are off" if len(value) < 16 else "reply tokens can be forged more easily"
        return f"{name} is only {len(value)} characters: {state}; {fix}"
    return None


def print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


class _LazyGroup(click.Group):
    """Loads a command's module when that command runs: `maild ingest`, one
    process per message under an MTA, need not load the daemon or IMAP code.
    The table only saves time; a command missing from it loads every module."""

    modules = {
        "ingest": "intake", "import": "intake", "parse": "intake",
        "issues": "records", "quarantine": "records", "customers": "customers",
        "outbox": "outbound", "notify": "outbound", "bounces": "outbound",
        "reply": "reps", "reps": "reps", "canned": "reps", "poll": "poll", "run": "daemon",
        "bulk": "bulk", "gifts": "gifts",
        "status": "status", "report": "report", "digest": "report",
        "sla": "sla", "selftest": "selftest",
    }

    def _load(self, *names: str) -> None:
        for name in names:
            importlib.import_module(f"{__name__}.{name}")  # registers its commands on `main`

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            pass
        elif cmd_name in self.modules:
            self._load(self.modules[cmd_name])
        else:  # an unknown name: click's own error, once every command is known
            self._load(*sorted(set(self.modules.values())))
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load(*sorted(set(self.modules.values())))
        return super().list_commands(ctx)


@click.group(cls=_LazyGroup, context_settings=CONTEXT)
@click.version_option(package_name="maild", prog_name="maild", help="Show the version and exit.")
@config_option
@verbose_option
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """maild: email-ingestion helpdesk daemon.

    -c and -v may come before or after the command name. Exit status: 0 done,
    1 refused, 65 bad input, 75 try again later (database locked or down),
    78 config error.
    """
    ctx.meta["maild.config"] = config_path
    ctx.meta["maild.verbose"] = verbose


@main.command()
@with_settings
def check(settings: Settings) -> None:
    """Validate the config file and print a summary (and warn about a weak secret)."""
    from maild import db

    click.echo("config OK")
    click.echo(f"database: {db.display_url(settings.database.url)}")
    click.echo(f"smtp: listen {settings.smtp.listen}, max_message_size {settings.smtp.max_message_size}")
    if settings.smtp.lmtp_listen:
        click.echo(f"lmtp: listen {settings.smtp.lmtp_listen}")
    click.echo(f"outbound: relay {settings.outbound.relay}")
    secret_set = "set" if os.environ.get(settings.security.secret_env) else "not set"
    click.echo(f"signing secret: ${settings.security.secret_env} ({secret_set})")
    for m in settings.mailbox:
        imap = f", imap {m.imap.user}@{m.imap.host}:{m.imap.port}/{m.imap.folder}" if m.imap else ""
        aliases = f" (aliases: {', '.join(m.aliases)})" if m.aliases else ""
        click.echo(f"mailbox {m.name}: {m.address}{aliases}, category {m.category}{imap}")
    for r in settings.rep:
        click.echo(f"rep {r.name} <{r.email}>")
    for c in settings.category:
        click.echo(f"category {c.name}")
    advice = secret_advice(settings)
    if advice:
        click.echo(f"maild: warning: {advice}", err=True)
