"""Customer commands: identification records and their history."""

from __future__ import annotations

import click

from ..customers import list_customers, show_customer
from ..app import build
from ..config import Settings
from . import json_option, main, print_json, with_settings


@main.group()
def customers() -> None:
    """List and show customer identification records."""


@customers.command("list")
@with_settings
@json_option
def customers_list(settings: Settings, as_json: bool) -> None:
    app = build(settings)
    with app.sessions() as session:
        rows = list_customers(session)
    if as_json:
        print_json(rows)
    else:
        for c in rows:
            click.echo(f"{c['id']:<6} {c['name'][:30]:<30} {', '.join(c['emails'])}")


@customers.command("show")
@with_settings
@json_option
@click.argument("customer_id", type=int)
def customers_show(settings: Settings, as_json: bool, customer_id: int) -> None:
    app = build(settings)
    with app.sessions() as session:
        data = show_customer(session, customer_id)
    if data is None:
        raise click.ClickException(f"no customer {customer_id}")
    if as_json:
        print_json(data)
        return
    click.echo(f"{data['id']}: {data['name']} <{', '.join(data['emails'])}>")
    for i in data["issues"]:
        click.echo(f"  #{i['id']} {i['status']} {i['subject']}")
