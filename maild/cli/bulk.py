"""Bulk mail commands: preview a segment, send, follow, resume and cancel a campaign.

Thin: the segment flags become a Segment, the work is maild.bulk's. A refused
request (BulkError, a bad gift, a template error) exits 1 with its reason.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from maild.app import build
from maild.bulk.campaigns import BulkError, Campaigns, Plan, campaign_json, list_campaigns, preview
from maild.bulk.gifts import Gift, GiftError
from maild.bulk.segments import Segment
from maild.cli import json_option, main, print_json, reading, with_settings
from maild.config import Settings
from maild.models import Campaign
from maild.outbound.templates import TemplateError


def _day(_ctx, param, value):
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date as YYYY-MM-DD") from None


def _money(_ctx, param, value):
    try:
        amount = Decimal(value) if value is not None else None
    except InvalidOperation:
        amount = None
    if value is not None and (amount is None or not amount.is_finite()):
        raise click.BadParameter(f"{value!r} is not an amount such as 100 or 49.90")
    return amount


SEGMENT_OPTIONS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.option("--bought", multiple=True, metavar="SKU", help="Bought this product (repeat: any of them)."),
    click.option("--viewed", multiple=True, metavar="SKU", help="Viewed this product (repeat: any of them)."),
    click.option("--spent-over", callback=_money, metavar="N", help="Spent more than N (in their currency)."),
    click.option("--spent-under", callback=_money, metavar="N", help="Spent less than N (in their currency)."),
    click.option("--last-visit-before", callback=_day, metavar="DATE", help="Last visited the site before DATE."),
    click.option("--last-visit-after", callback=_day, metavar="DATE", help="Last visited on DATE or later."),
    click.option("--list", "lists", multiple=True, metavar="NAME", help="On this mailing list (repeat: any)."),
    click.option("--tag", "tags", multiple=True, metavar="T", help="Has this tag (repeat: any of them)."),
    click.option("--language", "languages", multiple=True, metavar="L", help="Language (pt matches pt-BR)."),
    click.option("--time-zone", "time_zones", multiple=True, metavar="TZ", help="Time zone, e.g. Europe/Berlin."),
    click.option("--category", "categories", multiple=True, metavar="C", help="Had an issue in this category."),
    click.option("--registered/--unregistered", default=None, help="Registered users only, or only the others."),
    click.option("--contacted-before", callback=_day, metavar="DATE",
                 help="No mail from or to them (not automatic) since DATE; never contacted counts."),
    click.option("--contacted-after", callback=_day, metavar="DATE", help="Some mail from or to them since DATE."),
    click.option("--has-open-issue/--no-open-issue", default=None, help="With an issue not closed, or without."),
]


def segment_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(SEGMENT_OPTIONS):
        fn = option(fn)
    return fn


def _segment(kw: dict[str, Any]) -> Segment:
    names = ("bought", "viewed", "spent_over", "spent_under", "last_visit_before", "last_visit_after", "lists",
             "tags", "languages", "time_zones", "categories", "registered", "contacted_before", "contacted_after",
             "has_open_issue")
    values: dict[str, Any] = {n: kw.pop(n) for n in names}
    return Segment(**values)


def _refused(exc: Exception) -> None:
    click.echo(f"maild: {exc}", err=True)
    sys.exit(1)


@main.group()
def bulk() -> None:
    """Bulk mail to a segment of customers: preview, send, status, list, resume, cancel."""


@bulk.command("preview")
@with_settings
@json_option
@click.option("--sample", default=10, show_default=True, type=click.IntRange(0, 1000), help="Members to show.")
@segment_options
def bulk_preview(settings: Settings, as_json: bool, sample: int, **kw: Any) -> None:
    """How many customers a segment reaches, who is left out and why, and a sample."""
    segment = _segment(kw)
    with reading(settings) as session:
        found = preview(session, settings, segment, sample)
    if as_json:
        print_json(found.as_json() | {"segment": segment.as_json()})
        return
    click.echo(f"segment: {segment.describe()}")
    click.echo(f"{found.count} customer(s) get the mail")
    for reason, n in found.excluded.items():
        click.echo(f"  left out, {reason}: {n}")
    for m in found.sample:
        click.echo(f"  {m['id']:<6} {m['name'][:30]:<30} {m['email']}")


def _gift(gift: tuple[str, str] | None, expires: date | None) -> Gift | None:
    if gift is None:
        if expires is not None:
            raise GiftError("--gift-expires needs --gift AMOUNT CURRENCY")
        return None
    return Gift.checked(gift[0], gift[1], expires)


@bulk.command("send")
@with_settings
@json_option
@click.option("--template", required=True, help="Template name (config/templates/NAME.txt.j2).")
@click.option("--gift", nargs=2, metavar="AMOUNT CURRENCY", help="A gift certificate for each recipient.")
@click.option("--gift-expires", callback=_day, metavar="DATE", help="The gift certificates' last day.")
@click.option("--rate", type=click.IntRange(1), metavar="N", help="Mails per minute (default: bulk.rate).")
@click.option("--test-to", metavar="REP", help="Send one rendered sample to this rep (name or address) and stop.")
@segment_options
def bulk_send(settings: Settings, as_json: bool, template: str, gift, gift_expires, rate, test_to, **kw) -> None:
    """Send a template to a segment through the outbox, throttled, with a gift certificate each if asked."""
    segment = _segment(kw)
    app = build(settings)
    try:
        plan = Plan(template, segment, _gift(gift, gift_expires), rate)
        campaigns = Campaigns(settings, app.sessions, app.templates, app.signer)
        if test_to:
            with app.sessions() as session, session.begin():
                row = campaigns.test_send(session, plan, test_to)
                to, message_id = row.recipients[0], row.message_id
            click.echo(f"queued a sample {message_id} to {to}; nothing else sent")
            return
        with app.sessions() as session, session.begin():
            campaign = campaigns.create(session, plan)
            campaign_id = campaign.id
        _queue(campaigns, app, campaign_id, as_json)
    except (BulkError, GiftError, TemplateError) as exc:
        _refused(exc)
    finally:
        app.close()


def _queue(campaigns: Campaigns, app, campaign_id: int, as_json: bool) -> None:
    with app.sessions() as session:
        total = campaign_json(session, session.get_one(Campaign, campaign_id))["pending"]
    if not as_json:
        click.echo(f"campaign #{campaign_id}: queueing {total} mail(s)", err=True)
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if not as_json and sys.stderr.isatty():
            click.echo(f"\r{done[0]}/{total}", nl=False, err=True)

    campaigns.queue(campaign_id, progress)
    with app.sessions() as session:
        data = campaign_json(session, session.get_one(Campaign, campaign_id))
    if as_json:
        print_json(data)
    else:
        click.echo(f"\rcampaign #{campaign_id}: {data['queued']} queued, {data['cancelled']} cancelled, "
                   f"left out {data['excluded'] or 'nobody'}; the outbox sends at {data['rate']}/min")


@bulk.command("resume")
@with_settings
@json_option
@click.argument("campaign_id", type=int)
def bulk_resume(settings: Settings, as_json: bool, campaign_id: int) -> None:
    """Queue what an interrupted `bulk send` left pending (nobody is queued twice)."""
    app = build(settings)
    try:
        campaigns = Campaigns(settings, app.sessions, app.templates, app.signer)
        with app.sessions() as session:
            campaign = session.get(Campaign, campaign_id)
            if campaign is None or campaign.status != "queueing":
                raise BulkError(f"campaign #{campaign_id} has nothing left to queue" if campaign
                                else f"no campaign #{campaign_id}")
        _queue(campaigns, app, campaign_id, as_json)
    except (BulkError, TemplateError) as exc:
        _refused(exc)
    finally:
        app.close()


@bulk.command("status")
@with_settings
@json_option
@click.argument("campaign_id", type=int)
def bulk_status(settings: Settings, as_json: bool, campaign_id: int) -> None:
    """A campaign's progress: queued, sent, waiting, failed, cancelled; who was left out."""
    with reading(settings) as session:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            _refused(BulkError(f"no campaign #{campaign_id}"))
            return
        data = campaign_json(session, campaign)
    if as_json:
        print_json(data)
        return
    click.echo(_line(data))
    click.echo(f"  segment: {Segment(**_segment_args(data['segment'])).describe()}")
    if data["gift"]:
        g = data["gift"]
        click.echo(f"  gift: {g['amount']} {g['currency']}" + (f" until {g['expires']}" if g["expires"] else ""))
    click.echo(f"  recipients {data['recipients']}: pending {data['pending']}, queued {data['queued']}, "
               f"cancelled {data['cancelled']}; sent {data['sent']}, waiting {data['waiting']}, "
               f"failed {data['failed']}")
    for reason, n in data["excluded"].items():
        click.echo(f"  left out, {reason}: {n}")


def _segment_args(stored: dict) -> dict:
    out: dict[str, Any] = {}
    for k, v in stored.items():
        if isinstance(v, list):
            out[k] = tuple(v)
        elif k in ("spent_over", "spent_under"):
            out[k] = Decimal(v)
        elif isinstance(v, str):
            out[k] = date.fromisoformat(v)
        else:
            out[k] = v
    return out


def _line(d: dict) -> str:
    return (f"#{d['id']:<5} {d['status']:<10} {d['template']:<20} {d['sent']}/{d['recipients']} sent  "
            f"created {d['created']}")


@bulk.command("list")
@with_settings
@json_option
def bulk_list(settings: Settings, as_json: bool) -> None:
    """Every campaign with its progress."""
    with reading(settings) as session:
        rows = list_campaigns(session)
    if as_json:
        print_json(rows)
    else:
        for d in rows:
            click.echo(_line(d))


@bulk.command("cancel")
@with_settings
@click.argument("campaign_id", type=int)
def bulk_cancel(settings: Settings, campaign_id: int) -> None:
    """Stop a campaign: nothing more is queued, and its mail not yet sent is cancelled."""
    app = build(settings)
    try:
        counts = Campaigns(settings, app.sessions, app.templates, app.signer).cancel(campaign_id)
    except BulkError as exc:
        _refused(exc)
        return
    finally:
        app.close()
    click.echo(f"campaign #{campaign_id} cancelled: {counts['pending']} not queued, "
               f"{counts['outbox']} queued mail(s) stopped")
