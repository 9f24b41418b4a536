"""`maild issues list`, `search` and `merge`: finding a case again, and joining two.

Thin commands over desk/search.py and desk/merge.py; `records.py` adds them
to the `issues` group beside `issues show`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import NoReturn

import click

from maild.addresses import AddressRules
from maild.app import build
from maild.cli import json_option, print_json, reading, with_settings
from maild.config import Settings
from maild.desk import merge as merging
from maild.desk import search
from maild.models import Issue

STATUSES = ("open", "pending", "closed", "merged")
_SINCE = "an ISO date or time, such as 2026-11-02 or 2026-11-02T09:30 (UTC unless a zone is given)"


def _when(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not {_SINCE}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _refused(message: str) -> NoReturn:
    click.echo(f"maild: {message}", err=True)
    sys.exit(1)


def issue_line(i: dict) -> str:
    return (
        f"#{i['id']:<6} {i['status']:<7} {i['category']:<14} {i['interactions']:>3}  "
        f"{(i['customer'] or '-'):<30} {i['subject'][:60]}"
    )


def _date_option(name: str, what: str):
    return click.option(name, callback=_when, metavar="WHEN", help=f"{what} ({_SINCE}).")


@click.command("list")
@with_settings
@json_option
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="Only issues with this status (repeat for several; default every status but merged).")
@click.option("--assignee", help="Only issues assigned to this rep (name or email).")
@click.option("--unassigned", is_flag=True, help="Only issues nobody has taken.")
@click.option("--priority", "priorities", multiple=True, type=click.Choice(search.PRIORITY_ORDER),
              help="Only issues with this priority (repeat for several).")
@click.option("--tag", "tags", multiple=True, help="Only issues with this tag (repeat: all of them).")
@click.option("--category", help="Only issues in this category.")
@click.option("--mailbox", help="Only issues of this mailbox.")
@click.option("--customer", help="Only issues of the customer with this email address.")
@click.option("--order", "order_id", help="Only issues about this order id.")
@click.option("--gift", "gift_id", help="Only issues about this gift certificate id.")
@_date_option("--opened-after", "Opened at or after")
@_date_option("--opened-before", "Opened before")
@_date_option("--updated-after", "Last activity at or after")
@_date_option("--updated-before", "Last activity before")
@click.option("--breached", is_flag=True, help="Only issues that missed a turnaround target.")
@click.option("--sort", default="id", show_default=True, type=click.Choice(search.SORTS), help="Sort by this column.")
@click.option("--desc", is_flag=True, help="Sort in descending order.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many issues.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many issues first (paging).")
def issues_list(settings: Settings, as_json: bool, statuses, assignee, unassigned, priorities, tags, category,
                mailbox, customer, order_id, gift_id, opened_after, opened_before, updated_after, updated_before,
                breached, sort, desc, limit, offset) -> None:
    """Issues matching every filter given: id, status, category, interactions, customer, subject."""
    if assignee and unassigned:
        raise click.UsageError("give --assignee or --unassigned, not both")
    if mailbox:
        settings.mailbox_named(mailbox)  # an unknown mailbox is a config error naming the choices
    key = None
    if customer:
        key = AddressRules(settings.ingest.fold_plus_addresses, settings.ingest.case_sensitive_local_part).key(customer)
    with reading(settings) as session:
        try:
            f = search.IssueFilter(
                statuses=statuses, assignee_id=search.rep_id(session, assignee) if assignee else None,
                unassigned=unassigned, priorities=priorities, tags=tags, category=category, mailbox=mailbox,
                customer_key=key, order_id=order_id, gift_certificate_id=gift_id, opened_after=opened_after,
                opened_before=opened_before, updated_after=updated_after, updated_before=updated_before,
                breached=breached, sort=sort, desc=desc, limit=limit, offset=offset,
            )
            rows = search.list_issues(session, f)
        except search.SearchError as exc:
            _refused(str(exc))
    if as_json:
        print_json(rows)
    else:
        for row in rows:
            click.echo(issue_line(row))


@click.command("search")
@with_settings
@json_option
@click.argument("words", nargs=-1, required=True)
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES[:3]),
              help="Only issues with this status (repeat for several).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most this many issues.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many issues first (paging).")
def issues_search(settings: Settings, as_json: bool, words: tuple[str, ...], statuses, limit, offset) -> None:
    """Issues whose subjects or interaction texts contain every word, best match first, with a snippet.

    A trailing * matches a prefix (refund*). An order or gift certificate id
    given alone finds its issues too.
    """
    with reading(settings) as session:
        try:
            rows = search.search_issues(session, " ".join(words), statuses, limit, offset)
        except search.SearchError as exc:
            _refused(str(exc))
    if as_json:
        print_json(rows)
        return
    for row in rows:
        click.echo(issue_line(row))
        if row["snippet"]:
            click.echo(f"        {row['snippet'][:200]}")
        elif row["reference_match"]:
            click.echo(f"        order {row['order_id'] or '-'}, gift certificate {row['gift_certificate_id'] or '-'}")


@click.command("merge")
@with_settings
@json_option
@click.argument("source", type=int)
@click.argument("target", type=int)
def issues_merge(settings: Settings, as_json: bool, source: int, target: int) -> None:
    """Move every interaction of issue SOURCE onto issue TARGET; SOURCE is left as a pointer (merged).

    Mail that threads to SOURCE lands on TARGET afterwards.
    """
    app = build(settings)
    try:
        with app.sessions() as session, session.begin():
            a, b = session.get(Issue, source), session.get(Issue, target)
            if a is None or b is None:
                _refused(f"no issue #{source if a is None else target}")
            try:
                moved = merging.merge_issues(session, a, b)
            except merging.MergeError as exc:
                _refused(str(exc))
    finally:
        app.close()
    if as_json:
        print_json({"merged": source, "into": target, "interactions_moved": moved})
    else:
        click.echo(f"merged issue #{source} into #{target} ({moved} interaction(s) moved)")
