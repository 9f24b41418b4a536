"""Gift certificate commands: list, show, export for the shop, void.

Thin: maild.bulk.gifts does the work; an unknown code or a certificate void
already exits 1 with the reason.
"""

from __future__ import annotations

import sys

import click

from maild.app import build
from maild.bulk.gifts import STATES, GiftError, csv_lines, find, gift_json, gifts, void
from maild.cli import json_option, main, print_json, reading, with_settings
from maild.config import Settings


@main.group("gifts")
def gifts_group() -> None:
    """Gift certificates issued with campaigns: list, show, export, void."""


def _line(g: dict) -> str:
    expires = f" until {g['expires']}" if g["expires"] else ""
    campaign = f" campaign #{g['campaign']}" if g["campaign"] else ""
    return f"{g['code']}  {g['amount']:>10} {g['currency']}  {g['state']:<8} {g['email']}{campaign}{expires}"


_filters = [
    click.option("--campaign", type=int, help="Only this campaign's certificates."),
    click.option("--customer", type=int, help="Only this customer's certificates."),
    click.option("--state", type=click.Choice(STATES), help="Only issued, void or expired ones."),
]


def _with_filters(fn):
    for option in reversed(_filters):
        fn = option(fn)
    return fn


@gifts_group.command("list")
@with_settings
@json_option
@_with_filters
def gifts_list(settings: Settings, as_json: bool, campaign, customer, state) -> None:
    """Gift certificates, oldest first."""
    with reading(settings) as session:
        rows = list(gifts(session, campaign, customer, state))
    if as_json:
        print_json(rows)
    else:
        for g in rows:
            click.echo(_line(g))


@gifts_group.command("show")
@with_settings
@json_option
@click.argument("code")
def gifts_show(settings: Settings, as_json: bool, code: str) -> None:
    """One gift certificate, by code (any case, dashes optional) or id."""
    with reading(settings) as session:
        try:
            data = gift_json(find(session, code))
        except GiftError as exc:
            click.echo(f"maild: {exc}", err=True)
            sys.exit(1)
    if as_json:
        print_json(data)
    else:
        for key, value in data.items():
            click.echo(f"{key}: {'' if value is None else value}")


@gifts_group.command("export")
@with_settings
@click.option("--csv", "as_csv", is_flag=True, required=True, help="CSV with a header line (the only format).")
@_with_filters
def gifts_export(settings: Settings, as_csv: bool, campaign, customer, state) -> None:
    """All gift certificates (or a campaign's) as CSV on stdout, for the shop to load."""
    with reading(settings) as session:
        for chunk in csv_lines(gifts(session, campaign, customer, state)):
            sys.stdout.write(chunk)


@gifts_group.command("void")
@with_settings
@click.argument("codes", nargs=-1, required=True)
def gifts_void(settings: Settings, codes: tuple[str, ...]) -> None:
    """Void gift certificates (by code or id): the export shows them void for the shop."""
    app = build(settings)
    try:
        with app.sessions() as session, session.begin():
            done = [void(session, code).code for code in codes]
    except GiftError as exc:
        click.echo(f"maild: {exc}; nothing voided", err=True)
        sys.exit(1)
    finally:
        app.close()
    click.echo(f"voided {', '.join(done)}")
