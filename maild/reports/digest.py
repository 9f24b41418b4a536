"""The mailed digest: key statistics, the top rows of some reports and their charts.

A digest is composed here (pure: the same reports give the same mail) as a
multipart/alternative of text/plain and a multipart/related HTML part whose
charts are inline PNG images referenced by `cid:` (mail clients show no SVG).
Sending queues one outbox row of kind "digest" (no interaction: it is about no
issue) together with a digest_runs row unique per digest and period, in one
transaction: a period is mailed once, across restarts and several daemons.
This and the row it queues are the read side's only writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, time, timedelta, UTC
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from maild.config import DigestConfig, Settings
from maild.models import DigestRun, OutboxMessage, utcnow
from maild.outbound.compose import new_message_id, one_line
from maild.outbound.outbox import OutboxPolicy
from maild.reports.filters import Filters, Window
from maild.reports.model import Report, Targets, cell_text
from maild.reports.registry import run_report
from maild.reports.stats import STATISTIC_LABELS, key_statistics

log = logging.getLogger("maild.digest")

TEMPLATES = Path(__file__).with_name("templates")
# Seconds between the daemon's looks for a digest that is due.
CHECK_INTERVAL = 60.0


@dataclass(frozen=True)
class Period:
    key: str  # "2024-05-06" for a day, "2024-W19" for an ISO week
    window: Window


def _at(config: DigestConfig) -> time:
    hour, minute = config.at.split(":")
    return time(int(hour), int(minute), tzinfo=UTC)


def latest_period(config: DigestConfig, now: datetime) -> Period:
    """The last whole period whose digest time has come: yesterday's day once today's `at`
    has passed (else the day before), or last ISO week once Monday's `at` has passed."""
    now = now.astimezone(UTC)
    today = now.date()
    if config.every == "daily":
        start_day = today - timedelta(days=1 if now.timetz() >= _at(config) else 2)
        start = datetime.combine(start_day, time(), UTC)
        return Period(start_day.isoformat(), Window(start, start + timedelta(days=1)))
    monday = today - timedelta(days=today.weekday())
    if today == monday and now.timetz() < _at(config):
        monday -= timedelta(days=7)
    start_day = monday - timedelta(days=7)
    year, week, _ = start_day.isocalendar()
    start = datetime.combine(start_day, time(), UTC)
    return Period(f"{year}-W{week:02d}", Window(start, start + timedelta(days=7)))


def _age(seconds: float) -> str:
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def statistic_lines(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """The key statistics as (label, value) for people."""
    out = []
    for key, label in STATISTIC_LABELS.items():
        value = stats[key]
        if key == "oldest_waiting":
            value = (f"#{value['issue_id']} {value['subject']} ({_age(value['age_seconds'])})"
                     if value else "none")
        out.append((label, str(value)))
    return out


@dataclass(frozen=True)
class DigestMail:
    subject: str
    text: str
    html: str
    images: tuple[tuple[str, bytes], ...]  # (content id, PNG)


def render(config: DigestConfig, period: Period, stats: dict[str, Any], reports: list[Report],
           charts: list[bytes], domain: str) -> DigestMail:
    """The digest's text, HTML and images. Content-IDs are made from the digest, period and report."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    tables = []
    images = []
    widths = []
    for report, png in zip(reports, charts):
        cid = f"chart-{report.name}.{config.name}.{period.key}@{domain}"
        images.append((cid, png))
        rows = report.rows[:config.top]
        labels = [c.label for c in report.columns]
        cells = [[cell_text(v, c.type) for v, c in zip(row, report.columns)] for row in rows]
        widths.append([max(len(x) for x in col) for col in zip(labels, *cells)])
        tables.append({
            "name": report.name, "title": report.title, "cid": cid, "more": len(report.rows) - len(rows),
            "columns": labels, "rows": cells, "link": _link(config, report),
        })
    subject = f"Helpdesk digest {config.name}: {period.key}"
    values = {"subject": subject, "period": period, "stats": statistic_lines(stats), "tables": tables,
              "console_url": config.console_url}
    html = env.get_template("digest.html.j2").render(values)
    text = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=False,
                              undefined=jinja2.StrictUndefined).get_template("digest.txt.j2").render(
        values, widths=widths)
    return DigestMail(subject, text, html, tuple(images))


def _link(config: DigestConfig, report: Report) -> str | None:
    if not config.console_url:
        return None
    from urllib.parse import urlencode

    query = urlencode(report.filters.as_query())
    return f"{config.console_url.rstrip('/')}/reports/{report.name}" + (f"?{query}" if query else "")


def compose(mail: DigestMail, from_addr: str, display_name: str, to: tuple[str, ...], message_id: str,
            now: datetime, loop_tag: str) -> bytes:
    msg = EmailMessage(policy=SMTP)
    local, _, domain = from_addr.rpartition("@")
    msg["From"] = Address(one_line(display_name, 200), local, domain)
    msg["To"] = ", ".join(to)
    msg["Subject"] = one_line(mail.subject)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = f"<{message_id}>"
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Maild-Loop"] = one_line(loop_tag, 100)
    msg.set_content(mail.text)
    msg.add_alternative(mail.html, subtype="html")
    html_part = next(p for p in msg.iter_parts() if p.get_content_type() == "text/html")
    for cid, png in mail.images:
        html_part.add_related(png, "image", "png", cid=f"<{cid}>", filename=cid.partition("@")[0] + ".png")
    return msg.as_bytes()


def build_mail(session: Session, settings: Settings, config: DigestConfig, period: Period,
               now: datetime) -> DigestMail:
    """Run the digest's reports over its period and draw their charts (read only)."""
    from maild.reports.charts import chart_png

    targets = Targets(settings.reports.first_response_hours, settings.reports.resolution_hours)
    filters = Filters(since=period.window.start, until=period.window.end)
    reports = [run_report(session, name, filters, now=now, targets=targets) for name in config.reports]
    stats = key_statistics(session, now, targets)
    return render(config, period, stats, reports, [chart_png(r) for r in reports], settings.message_id_domain)


def already_sent(session: Session, config: DigestConfig, period: Period) -> bool:
    return session.scalar(select(DigestRun.id).where(
        DigestRun.digest == config.name, DigestRun.period == period.key)) is not None


def queue(session: Session, settings: Settings, config: DigestConfig, period: Period, mail: DigestMail,
          now: datetime, record: bool = True) -> OutboxMessage:
    """One outbox row (kind digest, no interaction) and, when `record`, the period's bookkeeping
    row; the caller commits. A period recorded already raises IntegrityError at flush."""
    policy = OutboxPolicy.from_settings(settings)
    mailbox = config.mailbox or settings.mailbox[0].name
    from_addr, display = policy.mailboxes[mailbox]
    message_id = new_message_id(policy.message_id_domain)
    data = compose(mail, from_addr, display or "maild", config.recipients, message_id, now,
                   policy.message_id_domain)
    row = OutboxMessage(
        kind="digest", mailbox=mailbox, envelope_from=from_addr, recipients=list(config.recipients),
        recipient_key=policy.rules.key(config.recipients[0]), message_id=message_id, data=data, auto=True,
        to_customer=False, status="queued", attempts=0, next_attempt_at=now, deadline_at=now + policy.deadline,
        created_at=now,
    )
    session.add(row)
    session.flush()
    if record:
        session.add(DigestRun(digest=config.name, period=period.key, outbox_id=row.id, created_at=now))
        session.flush()
    session.info["outbox_queued"] = True  # wakes the daemon's sender (outbox.wake_on_queued)
    return row


def send(sessions: sessionmaker[Session], settings: Settings, config: DigestConfig, now: datetime,
         again: bool = False) -> tuple[Period, int | None]:
    """Queue the digest of the latest period due at `now`; the outbox row's id, or None when
    that period went already (unless `again`: then it goes once more, the first record kept)."""
    period = latest_period(config, now)
    with sessions() as session:
        sent = already_sent(session, config, period)
        if sent and not again:
            return period, None
        mail = build_mail(session, settings, config, period, now)
    try:
        with sessions() as session, session.begin():
            row = queue(session, settings, config, period, mail, now, record=not sent)
            row_id = row.id
    except IntegrityError:  # another daemon recorded this period meanwhile
        log.info("digest=%s period=%s already sent by another process", config.name, period.key)
        return period, None
    log.info("digest=%s period=%s queued outbox=%s to=%s", config.name, period.key, row_id,
             ",".join(config.recipients))
    return period, row_id


class Digests:
    """The daemon's job: every CHECK_INTERVAL, queue each digest whose period is due."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings

    def run(self, now: datetime | None = None) -> list[int]:
        queued = []
        for config in self.settings.digest:
            _, row_id = send(self.sessions, self.settings, config, now or utcnow())
            if row_id is not None:
                queued.append(row_id)
        return queued


