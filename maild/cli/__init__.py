"""The `maild` command line: thin commands over the composition root."""

from __future__ import annotations

import functools
import json
import logging
import sys

import click

from ..config import ConfigError, Settings, load

EX_DATAERR = 65
EX_TEMPFAIL = 75
EX_CONFIG = 78

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    envvar="MAILD_CONFIG",
    type=click.Path(dir_okay=False),
    help="Config file (default: $MAILD_CONFIG).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def with_settings(fn):
    """Load the config named by -c or $MAILD_CONFIG; a bad config exits 78."""

    @config_option
    @functools.wraps(fn)
    def wrapper(config_path, **kwargs):
        try:
            settings = load(config_path)
        except ConfigError as exc:
            click.echo(f"maild: {exc}", err=True)
            sys.exit(EX_CONFIG)
        return fn(settings, **kwargs)

    return wrapper


def print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """maild: email-ingestion helpdesk daemon."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)


@main.command()
@with_settings
def check(settings: Settings) -> None:
    """Validate the config file and print a summary."""
    click.echo("config OK")
    click.echo(f"database: {settings.database.url}")
    click.echo(f"smtp: listen {settings.smtp.listen}, max_message_size {settings.smtp.max_message_size}")
    if settings.smtp.lmtp_listen:
        click.echo(f"lmtp: listen {settings.smtp.lmtp_listen}")
    click.echo(f"outbound: relay {settings.outbound.relay}")
    click.echo(f"signing secret: ${settings.security.secret_env}")
    for m in settings.mailbox:
        imap = f", imap {m.imap.user}@{m.imap.host}:{m.imap.port}/{m.imap.folder}" if m.imap else ""
        aliases = f" (aliases: {', '.join(m.aliases)})" if m.aliases else ""
        click.echo(f"mailbox {m.name}: {m.address}{aliases}, category {m.category}{imap}")
    for r in settings.rep:
        click.echo(f"rep {r.name} <{r.email}>")
    for c in settings.category:
        click.echo(f"category {c.name}")


from . import intake as _intake  # noqa: E402,F401  (registers commands)
from . import records as _records  # noqa: E402,F401
from . import customers as _customers  # noqa: E402,F401
from . import outbound as _outbound  # noqa: E402,F401
from . import reps as _reps  # noqa: E402,F401
from . import poll as _poll  # noqa: E402,F401
from . import daemon as _daemon  # noqa: E402,F401
