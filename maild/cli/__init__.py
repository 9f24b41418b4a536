"""The `maild` command line: thin commands over the composition root."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import sys

import click

from maild.config import ConfigError, Settings, load

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


class _LazyGroup(click.Group):
    """Loads a command's module when that command runs: `maild ingest`, one
    process per message under an MTA, need not load the daemon or IMAP code.
    The table only saves time; a command missing from it loads every module."""

    modules = {
        "ingest": "intake", "import": "intake", "parse": "intake",
        "issues": "records", "quarantine": "records", "customers": "customers",
        "outbox": "outbound", "notify": "outbound", "bounces": "outbound",
        "reply": "reps", "canned": "reps", "poll": "poll", "run": "daemon",
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


@click.group(cls=_LazyGroup)
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
