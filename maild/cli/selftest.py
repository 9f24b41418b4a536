"""`maild selftest`: probe every support address now, or show the probes so far.

The probes are sent here (through the outbox, at once) but come back through
the running daemon's intake (`maild run` must be running to receive them);
this command waits for them in the database. Exit 0 when every probe came
back within the wait, 1 otherwise, naming the addresses that failed, so cron
and monitoring can run it.
"""

from __future__ import annotations

import sys
import time

import click

from maild.app import build
from maild.cli import json_option, main, print_json, with_settings
from maild.config import Settings
from maild.desk.selftest import ProbeView


def _line(p: ProbeView) -> str:
    if p.returned_at is not None:
        return f"{p.state:<8} {p.address:<32} via {p.returned_via} in {p.round_trip:.1f} s ({p.trigger}, {p.queued_at:%Y-%m-%d %H:%M:%S})"
    return f"{p.state:<8} {p.address:<32} not back ({p.trigger}, sent {p.queued_at:%Y-%m-%d %H:%M:%S})"


@main.command()
@with_settings
@json_option
@click.option("--mailbox", help="Only this mailbox's address and aliases.")
@click.option("--wait", type=click.FloatRange(min=0), help="Seconds to wait for the probes (default: selftest.alert_after).")
@click.option("--history", is_flag=True, help="Show the recent probes instead of sending new ones.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Probes --history shows.")
def selftest(settings: Settings, as_json: bool, mailbox: str | None, wait: float | None, history: bool,
             limit: int) -> None:
    """Send a signed probe to every support address and wait for each to come back through the intake."""
    if mailbox:
        settings.mailbox_named(mailbox)  # an unknown name: a config error naming the known ones
    app = build(settings, secret_required=not history)
    try:
        if history:
            rows = app.selftest.history(limit, mailbox)
            if as_json:
                print_json([p.as_json() for p in rows])
            else:
                for p in rows:
                    click.echo(_line(p))
            return
        tokens = app.selftest.send("manual", mailbox)
        app.sender.run_once()  # leave at once, not at the daemon's next outbox run
        deadline = time.monotonic() + (settings.selftest.alert_after if wait is None else wait)
        while True:
            probes = app.selftest.probes(tokens)
            if all(p.returned_at is not None for p in probes) or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
    finally:
        app.close()
    limit_s = settings.selftest.alert_after if wait is None else wait
    failed = [p for p in probes if p.returned_at is None or (p.round_trip or 0) > limit_s]
    if as_json:
        print_json({"ok": not failed, "failed": [p.address for p in failed], "probes": [p.as_json() for p in probes]})
    else:
        for p in probes:
            click.echo(_line(p))
    if failed:
        click.echo(f"maild: self-test failed for {', '.join(p.address for p in failed)}: "
                   f"no probe back within {limit_s:g} s", err=True)
        sys.exit(1)
