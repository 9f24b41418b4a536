"""`maild report` and `maild digest`: the reports at the terminal, and a digest mailed by hand.

Thin: filters from the options, the numbers from maild.reports, printed as a
table (rich), JSON or CSV. Read-only apart from `digest send`, which queues
one outbox row.
"""

from __future__ import annotations

import csv
import sys
from datetime import datetime, UTC

import click

from maild.cli import EX_DATAERR, json_option, main, print_json, reading, with_settings
from maild.config import Settings

FILTER_OPTIONS = (
    ("since", "First day (YYYY-MM-DD) or instant (ISO 8601, UTC) included; default: 30 days before --until."),
    ("until", "Last day included (YYYY-MM-DD), or the instant the range ends; default: now."),
    ("mailbox", "Only this mailbox (its name)."),
    ("category", "Only this category."),
    ("priority", "Only this priority."),
    ("rep", "Only this rep (email or name): assignee of issues, author of interactions."),
    ("channel", "Only this channel (email, phone, note, web)."),
)


def _filter_options(fn):
    for name, text in reversed(FILTER_OPTIONS):
        fn = click.option(f"--{name}", help=text)(fn)
    return fn


def _targets(settings: Settings):
    from maild.reports import Targets

    return Targets(settings.reports.first_response_hours, settings.reports.resolution_hours)


def _print_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    from maild.reports.model import cell_text

    w = report.window
    table = Table(title=f"{report.title}, {w.start.isoformat()} to {w.end.isoformat()}",
                  show_footer=report.totals is not None)
    for i, c in enumerate(report.columns):
        arrow = (" v" if report.desc else " ^") if c.name == report.sort else ""
        footer = cell_text(report.totals[i], c.type) if report.totals is not None and report.totals[i] is not None else ""
        table.add_column(c.label + arrow, footer=footer, justify="left" if c.type in ("text", "date") else "right")
    for row in report.rows:
        table.add_row(*(cell_text(v, c.type) for v, c in zip(row, report.columns)))
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    if not report.rows:
        click.echo("(no data in this period)")


def _print_statistics(stats: dict) -> None:
    from maild.reports.digest import statistic_lines

    width = max(len(label) for label, _ in statistic_lines(stats))
    for label, value in statistic_lines(stats):
        click.echo(f"{label + ':':<{width + 2}}{value}")


@main.command("report")
@with_settings
@click.argument("name", required=False)
@_filter_options
@click.option("--sort", help="Sort by this column (its name as in --json).")
@click.option("--desc", is_flag=True, help="Sort descending.")
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (a header line, then the rows).")
def report(settings: Settings, name: str | None, sort: str | None, desc: bool, as_json: bool, as_csv: bool,
           **filters: str | None) -> None:
    """A report (issue-types, reps, resources, turnaround, backlog, channels); alone: the key statistics."""
    from maild.models import utcnow
    from maild.reports import Filters, FilterError, ReportError, key_statistics, run_report

    try:
        chosen = Filters.from_query({k: v for k, v in filters.items() if v})
    except FilterError as exc:
        click.echo(f"maild: report: {exc}", err=True)
        sys.exit(EX_DATAERR)
    with reading(settings) as session:
        if name is None:
            stats = key_statistics(session, utcnow(), _targets(settings))
            print_json(stats) if as_json else _print_statistics(stats)
            return
        try:
            result = run_report(session, name, chosen, sort, desc, targets=_targets(settings))
        except ReportError as exc:
            click.echo(f"maild: report: {exc}", err=True)
            sys.exit(EX_DATAERR)
    if as_json:
        print_json(result.as_json())
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(c.name for c in result.columns)
        writer.writerows(["" if v is None else v for v in row] for row in result.rows)
    else:
        _print_table(result)


@main.group()
def digest() -> None:
    """Mailed digests ([[digest]] in the config)."""


@digest.command("send")
@with_settings
@click.argument("name")
@click.option("--now", "now_text", help="Act as if it were this time (ISO 8601, UTC); default: now.")
@click.option("--again", is_flag=True, help="Send even if this period's digest went already.")
def digest_send(settings: Settings, name: str, now_text: str | None, again: bool) -> None:
    """Queue digest NAME for its latest period now (the daemon sends it at its time by itself)."""
    from maild import db
    from maild.reports import digest as digests

    config = next((d for d in settings.digest if d.name == name), None)
    if config is None:
        known = ", ".join(d.name for d in settings.digest) or "none configured"
        click.echo(f"maild: digest: no digest named {name!r} ({known})", err=True)
        sys.exit(EX_DATAERR)
    try:
        now = datetime.fromisoformat(now_text.replace("Z", "+00:00")) if now_text else datetime.now(UTC)
    except ValueError:
        click.echo(f"maild: digest: --now {now_text!r} is not an ISO 8601 time", err=True)
        sys.exit(EX_DATAERR)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    engine = db.make_engine(settings.database.url)
    try:
        db.migrate(engine)
        period, row_id = digests.send(db.session_factory(engine), settings, config, now, again=again)
    finally:
        engine.dispose()
    if row_id is None:
        click.echo(f"digest {name} for {period.key} was sent already (--again sends it once more)")
    else:
        click.echo(f"digest {name} for {period.key} queued (outbox #{row_id}) to {', '.join(config.recipients)}")
