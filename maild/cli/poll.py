"""`maild poll`: drain IMAP mailboxes once (for cron and tests) or until stopped."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import click

from maild.app import build
from maild.config import ConfigError, Settings
from maild.ingest.imap.poller import ImapService, imap_services
from maild.ingest.imap.client import explain
from maild.cli import EX_CONFIG, EX_TEMPFAIL, config_message, main, settle, with_settings


def _chosen(settings: Settings, name: str | None) -> list[str]:
    if name is not None:
        mailbox = settings.mailbox_named(name)
        if mailbox.imap is None:
            raise ConfigError(f"mailbox {name!r} has no [mailbox.imap] table")
        return [name]
    names = [m.name for m in settings.mailbox if m.imap is not None]
    if not names:
        raise ConfigError("no mailbox has an [mailbox.imap] table")
    return names


def _once(services: list[ImapService]) -> int:
    failed = 0
    for service in services:
        try:
            report = service.poll_once()
        except Exception as exc:
            click.echo(f"maild: imap {service.name}: {explain(exc, service.cfg)}", err=True)
            failed += 1
            continue
        click.echo(f"{service.name}: {report}")
    return EX_TEMPFAIL if failed else 0


def _forever(services: list[ImapService]) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    threads = [threading.Thread(target=s.run, args=(stop,), name=f"imap-{s.name}") for s in services[1:]]
    for t in threads:
        t.start()
    services[0].run(stop)  # in the main thread, which is where signals arrive
    for t in threads:
        t.join()


@main.command()
@with_settings
@click.option("--mailbox", "mailbox_name", help="The mailbox to poll (default: every mailbox with IMAP).")
@click.option("--once", is_flag=True, help="One pass, then exit (75 if a mailbox failed).")
def poll(settings: Settings, mailbox_name: str | None, once: bool) -> None:
    """Fetch new mail from the mailboxes' IMAP folders.

    With --once: a single pass per mailbox. Without: keep going (IDLE where the
    server has it, else every poll_interval) until SIGINT or SIGTERM.
    """
    try:
        names = _chosen(settings, mailbox_name)
    except ConfigError as exc:
        click.echo(f"maild: {config_message(exc, click.get_current_context().meta.get('maild.config_path'))}", err=True)
        sys.exit(EX_CONFIG)
    imap_log = logging.getLogger("maild.imap")
    if imap_log.getEffectiveLevel() > logging.INFO:
        imap_log.setLevel(logging.INFO)  # progress and reconnects are what this command is for
    # Worker processes are forked only when a single mailbox runs (no other threads then);
    # then every core parses, as in `maild import`: the storing process mostly waits.
    alone = once or len(names) == 1
    app = build(settings, workers=(os.cpu_count() or 1) + 1 if alone else 1)
    settle()
    try:
        if alone:
            app.pipeline.start()  # forked now, before the I/O thread starts
        services = [s for s in imap_services(app) if s.name in names]
        if once:
            code = _once(services)
        else:
            _forever(services)
            code = 0
    finally:
        app.close()
    sys.exit(code)
