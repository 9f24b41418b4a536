"""Customer commands: identification records, their history, and changing them.

Thin: each command opens one transaction and calls maild.customers (queries, admin, importer);
a refused change (CustomerError) exits 1 with its reason and changes nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import click

from maild.addresses import AddressRules
from maild.app import build
from maild.config import Settings
from maild.customers.admin import CustomerError, RecordFields, add_address, edit, link, merge, remove_address, split_tags
from maild.customers.importer import import_users, read_users
from maild.customers.queries import customer_json, list_customers, search_customers, show_customer
from maild.cli import json_option, main, print_json, reading, with_settings


@main.group()
def customers() -> None:
    """Customer identification records: find, show, import, link, merge, edit."""


def _rules(settings: Settings) -> AddressRules:
    return AddressRules(settings.ingest.fold_plus_addresses, settings.ingest.case_sensitive_local_part)


@contextmanager
def _transaction(settings: Settings):
    """One transaction over the app's database; a CustomerError rolls it back and exits 1."""
    app = build(settings)
    try:
        with app.sessions() as session, session.begin():
            yield session, _rules(settings)
    except CustomerError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        app.close()


def _line(c: dict) -> str:
    user = f" [user {c['registered_user_id']}]" if c["registered_user_id"] else ""
    return f"{c['id']:<6} {c['name'][:30]:<30} {', '.join(c['emails'])}{user}"


def _print_record(data: dict, as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    click.echo(_line(data))
    for key in ("postal_code", "phone", "other_id_info", "language", "time_zone", "birthday", "last_visit"):
        if data[key]:
            click.echo(f"  {key}: {data[key]}")
    if data["tags"]:
        click.echo(f"  tags: {' '.join(data['tags'])}")
    if data["total_spent"] is not None:
        click.echo(f"  total_spent: {data['total_spent']} {data['currency'] or ''}".rstrip())
    for key in ("products_bought", "products_viewed", "mailing_lists"):
        if data.get(key):
            click.echo(f"  {key}: {' '.join(data[key])}")
    if data["opted_out"]:
        click.echo(f"  opted out of bulk mail: {data['opted_out']}")
    for g in data.get("gift_certificates", ()):
        click.echo(f"  gift certificate {g['code']}: {g['amount']} {g['currency']} ({g['state']})")


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print_json(rows)
    else:
        for c in rows:
            click.echo(_line(c))


@customers.command("list")
@with_settings
@json_option
def customers_list(settings: Settings, as_json: bool) -> None:
    """Every identification record (merged ones show under their survivor)."""
    with reading(settings) as session:
        rows = list_customers(session)
    _print_rows(rows, as_json)


@customers.command("search")
@with_settings
@json_option
@click.argument("text")
def customers_search(settings: Settings, as_json: bool, text: str) -> None:
    """Records by name, any address, phone number or tag."""
    with reading(settings) as session:
        rows = search_customers(session, text)
    _print_rows(rows, as_json)


@customers.command("show")
@with_settings
@json_option
@click.argument("customer_id", type=int)
def customers_show(settings: Settings, as_json: bool, customer_id: int) -> None:
    """A record and all its issues, re-checked against registered users first."""
    # Read-only unless the re-check links or merges: then it waits for the write lock briefly.
    try:
        with reading(settings) as session:
            shown = show_customer(session, _rules(settings), customer_id)
    except CustomerError as exc:
        raise click.ClickException(str(exc)) from None
    if shown is None:
        raise click.ClickException(f"no customer {customer_id}")
    for note in shown.notes:
        click.echo(note, err=True)
    _print_record(shown.record, as_json)
    if not as_json:
        for i in shown.record["issues"]:
            role = "" if i["role"] == "customer" else " (wrote in it)"
            click.echo(f"  #{i['id']} {i['status']} {i['category']} {i['subject']}{role}")


@customers.command("import")
@with_settings
@json_option
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "json"]), default="auto",
              help="File format (default: by the file name, else by its first character).")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
def customers_import(settings: Settings, as_json: bool, fmt: str, path: str) -> None:
    """Import or update registered users from the site's user list (CSV or JSON)."""
    with click.open_file(path, "rb") as stream:  # "-" is stdin
        data = stream.read()
    if fmt == "auto":
        suffix = Path(path).suffix.lower()
        fmt = suffix[1:] if suffix in (".csv", ".json") else ("json" if data.lstrip()[:1] == b"[" else "csv")
    with _transaction(settings) as (session, rules):
        try:
            report = import_users(session, rules, read_users(data, fmt))
        except CustomerError as exc:
            raise CustomerError(f"{path}: {exc}; nothing imported") from None
    if as_json:
        print_json(report.as_json())
    else:
        click.echo(", ".join(f"{n} {k}" for k, n in report.as_json().items()))


@customers.command("link")
@with_settings
@json_option
@click.argument("customer_id", type=int)
@click.argument("user_id")
def customers_link(settings: Settings, as_json: bool, customer_id: int, user_id: str) -> None:
    """Record CUSTOMER_ID is registered user USER_ID (merged into that user's record if any)."""
    with _transaction(settings) as (session, _):
        customer, merged = link(session, customer_id, user_id)
        data = customer_json(customer)
    if merged:
        click.echo(f"customer {customer_id} merged into customer {data['id']}", err=True)
    _print_record(data, as_json)


@customers.command("merge")
@with_settings
@json_option
@click.argument("source_id", type=int)
@click.argument("target_id", type=int)
def customers_merge(settings: Settings, as_json: bool, source_id: int, target_id: int) -> None:
    """Merge record SOURCE_ID into TARGET_ID: addresses, issues and interactions move."""
    with _transaction(settings) as (session, _):
        data = customer_json(merge(session, source_id, target_id))
    _print_record(data, as_json)


@customers.command("edit")
@with_settings
@json_option
@click.argument("customer_id", type=int)
@click.option("--name", help="The customer's name.")
@click.option("--postal-code", help="Postal code.")
@click.option("--phone", help="Phone number.")
@click.option("--other-id-info", help="Whatever else identifies them.")
@click.option("--tags", help='Replace the tags ("vip new"; "" clears).')
@click.option("--add-tag", multiple=True, help="Add a tag; repeatable.")
@click.option("--remove-tag", multiple=True, help="Remove a tag; repeatable.")
@click.option("--language", help="A language tag such as en or pt-BR.")
@click.option("--time-zone", help="A time zone such as Europe/Berlin.")
@click.option("--birthday", help="YYYY-MM-DD.")
def customers_edit(settings: Settings, as_json: bool, customer_id: int, tags, add_tag, remove_tag, **values) -> None:
    """Set fields of a record; an empty value ("") clears a field."""
    fields = RecordFields(**values, tags=split_tags(tags) if tags is not None else None)
    with _transaction(settings) as (session, _):
        data = customer_json(edit(session, customer_id, fields, add_tag, remove_tag))
    _print_record(data, as_json)


@customers.command("add-address")
@with_settings
@json_option
@click.argument("customer_id", type=int)
@click.argument("email")
def customers_add_address(settings: Settings, as_json: bool, customer_id: int, email: str) -> None:
    """Give a record another address (refused when another record has it)."""
    with _transaction(settings) as (session, rules):
        customer, added = add_address(session, rules, customer_id, email)
        data = customer_json(customer)
    if not added:
        click.echo(f"customer {customer_id} already has {email}", err=True)
    _print_record(data, as_json)


@customers.command("remove-address")
@with_settings
@json_option
@click.argument("customer_id", type=int)
@click.argument("email")
def customers_remove_address(settings: Settings, as_json: bool, customer_id: int, email: str) -> None:
    """Take an address off a record (its history stays with the record)."""
    with _transaction(settings) as (session, rules):
        data = customer_json(remove_address(session, rules, customer_id, email))
    _print_record(data, as_json)
