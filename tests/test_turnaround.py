"""Turnaround: business time under a calendar, pauses while pending, first response and resolution.

The calendar arithmetic is checked exactly over a weekend, a holiday and both
DST changes; then issues made by real mail through the pipeline are judged
at injected times (`Reminders.check(now)`): a business-hours calendar stops
the clock over the weekend, and a pending issue's clock stops until it is
reopened. A rep's reply records the first response, a close the resolution.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from maild.app import build
from maild.config import ConfigError, load
from maild.config_desk import CalendarConfig
from maild.desk.calendar import Calendar, elapsed, seconds
from maild.models import Issue, IssuePause, OutboxMessage, Rep, utcnow
from test_rep_commands import _mail, deliver
from conftest import SECRET, write_config

BERLIN = ZoneInfo("Europe/Berlin")


def office(**kw) -> Calendar:
    cfg = {"name": "office", "time_zone": "Europe/Berlin", "hours": ("09:00-17:00",), **kw}
    return Calendar.from_config(CalendarConfig(**cfg))


def berlin(*args) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


# -- the arithmetic ------------------------------------------------------------------


def test_a_weekend_does_not_count():
    # Friday 16:00 to Monday 10:00: one hour on Friday, one on Monday.
    assert seconds(office(), berlin(2025, 6, 13, 16), berlin(2025, 6, 16, 10)) == 2 * 3600
    assert seconds(None, berlin(2025, 6, 13, 16), berlin(2025, 6, 16, 10)) == 66 * 3600  # 24x7


def test_a_holiday_does_not_count():
    cal = office(holidays=("2025-06-18",))
    # Tuesday 9:00 to Thursday 17:00: Tuesday and Thursday, not the Wednesday holiday.
    assert seconds(cal, berlin(2025, 6, 17, 9), berlin(2025, 6, 19, 17)) == 16 * 3600
    assert seconds(office(), berlin(2025, 6, 17, 9), berlin(2025, 6, 19, 17)) == 24 * 3600


@pytest.mark.parametrize("friday, monday", [((2025, 3, 28), (2025, 3, 31)), ((2025, 10, 24), (2025, 10, 27))],
                         ids=["spring-forward", "fall-back"])
def test_working_days_keep_their_hours_across_dst(friday, monday):
    # The clocks change on the Sunday between: each working day is still 8 hours.
    assert seconds(office(), berlin(*friday, 9), berlin(*monday, 17)) == 16 * 3600
    # Around the clock across the change, a day has 23 or 25 hours; business time does not care.
    cal = office(days=("mon", "tue", "wed", "thu", "fri", "sat", "sun"), hours=("00:00-24:00",))
    total = seconds(cal, berlin(*friday, 0), berlin(*monday, 0))
    assert total == seconds(None, berlin(*friday, 0), berlin(*monday, 0))
    assert total in (71 * 3600, 73 * 3600)


def test_split_days_and_an_evening_in_another_zone():
    cal = office(hours=("09:00-12:00", "13:00-17:00"), time_zone="America/New_York")
    ny = ZoneInfo("America/New_York")
    assert seconds(cal, datetime(2025, 6, 16, 8, tzinfo=ny), datetime(2025, 6, 16, 18, tzinfo=ny)) == 7 * 3600
    # 23:00 UTC on a Monday is 19:00 in New York: after hours.
    assert seconds(cal, datetime(2025, 6, 16, 23, tzinfo=UTC), datetime(2025, 6, 17, 1, tzinfo=UTC)) == 0


def test_pauses_are_taken_out_and_counting_stops_at_the_limit():
    start = datetime(2025, 6, 16, 0, tzinfo=UTC)
    pauses = [(start + timedelta(hours=2), start + timedelta(hours=5)), (start + timedelta(hours=8), None)]
    assert elapsed(None, start, start + timedelta(hours=10), pauses) == 5 * 3600
    # Ten years open: the count stops just past the target it is asked about.
    long_ago = start - timedelta(days=3650)
    assert 3600 < elapsed(office(), long_ago, start, limit=3600) <= 9 * 3600


def test_bad_calendars_are_config_errors(tmp_path):
    for calendar, words in [('time_zone = "Mars/Olympus"', "not a time zone"),
                            ('hours = ["17:00-09:00"]', "before the end"),
                            ('hours = ["09:00-13:00", "12:00-17:00"]', "must not overlap"),
                            ('mailboxes = ["nope"]', "no [[mailbox]] defines")]:
        path = write_config(tmp_path / "bad.toml", "sqlite:///x.db", extra=f'[[calendar]]\nname = "c"\n{calendar}\n')
        with pytest.raises(ConfigError) as err:
            load(path)
        assert words in str(err.value)


# -- on issues made by real mail -------------------------------------------------------

POLICY = """
[sla]
first_response_hours = 4
remind_at = 0.75
escalate_to = ["lead@acme.test"]

[[calendar]]
name = "office"
time_zone = "Europe/Berlin"
days = ["mon", "tue", "wed", "thu", "fri"]
hours = ["09:00-17:00"]
holidays = ["2025-06-18"]
mailboxes = ["support"]
"""


@pytest.fixture
def desk(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    a = build(load(write_config(tmp_path / "maild.toml", db_url, extra=POLICY)))
    yield a
    a.close()


def open_issue(app, opened: datetime, subject: str = "Printer on fire") -> int:
    stored = deliver(app, _mail("Pat <pat@example.com>", "support@acme.test", subject, "It burns."))
    with app.sessions() as s, s.begin():
        s.execute(update(Issue).where(Issue.id == stored.issue_id).values(opened_at=opened.astimezone(UTC)))  # stored as UTC
    return stored.issue_id


def rep_mail(app, issue_id: int, text: str, rep: str = "alice@acme.test"):
    with app.sessions() as s:
        rid = s.scalar(select(Rep.id).where(Rep.email == rep))
    address = app.signer.address("support@acme.test", issue_id, rid, "reply")
    return deliver(app, _mail(rep, address, f"Re: [#{issue_id}] Printer on fire", text), envelope_to=(address,))


def notices(app, issue_id: int) -> list[tuple[str, tuple[str, ...]]]:
    with app.sessions() as s:
        rows = s.scalars(select(OutboxMessage).where(OutboxMessage.issue_id == issue_id,
                                                     OutboxMessage.kind.like("sla-%")).order_by(OutboxMessage.id))
        return [(r.kind, tuple(r.recipients)) for r in rows]


def test_business_hours_stop_the_clock_over_the_weekend(desk):
    issue = open_issue(desk, berlin(2025, 6, 13, 16))  # Friday 16:00, 4 business hours to answer
    assert desk.reminders.check(berlin(2025, 6, 14, 18)) == {}  # Saturday: 26 hours later, one business hour
    assert desk.reminders.check(berlin(2025, 6, 16, 10, 30)) == {}  # Monday 10:30: 2.5 of 4 hours
    assert desk.reminders.check(berlin(2025, 6, 16, 11, 5)) == {"reminder": 1}  # past 3 hours (75%)
    assert desk.reminders.check(berlin(2025, 6, 16, 11, 55)) == {}
    assert desk.reminders.check(berlin(2025, 6, 16, 12, 1)) == {"escalation": 1}  # past 4 hours
    assert desk.reminders.check(berlin(2025, 6, 17, 13)) == {}
    assert sorted(notices(desk, issue)) == [("sla-escalation", ("lead@acme.test",)),  # unassigned: every rep
                                            ("sla-reminder", ("alice@acme.test",)), ("sla-reminder", ("bob@acme.test",))]


def test_a_pending_issue_is_paused_until_reopened(desk, tmp_path, db_url):
    # 24x7 for this test: a category calendar would win, so use the mailbox without one.
    opened = utcnow() - timedelta(hours=3)
    paused, running = open_issue(desk, opened, "Paused"), open_issue(desk, opened, "Running")
    for issue in (paused, running):
        with desk.sessions() as s, s.begin():
            s.execute(update(Issue).where(Issue.id == issue).values(mailbox="billing"))
    rep_mail(desk, paused, "#pending")  # waiting for the customer from now on
    with desk.sessions() as s:
        assert s.scalar(select(IssuePause.ended_at).where(IssuePause.issue_id == paused)) is None
    later = utcnow() + timedelta(hours=2)
    # Five hours since opening: the running issue missed its 4 hours; the paused one has spent 3 (75%).
    assert desk.reminders.check(later) == {"escalation": 1, "reminder": 1}
    assert {k for k, _ in notices(desk, running)} == {"sla-escalation"}
    assert {k for k, _ in notices(desk, paused)} == {"sla-reminder"}
    rep_mail(desk, paused, "#reopen")  # the clock runs again
    with desk.sessions() as s:
        assert s.scalar(select(IssuePause.ended_at).where(IssuePause.issue_id == paused)) is not None
    assert desk.reminders.check(later) == {"escalation": 1}  # 3 h + 2 h since the reopen
    assert {k for k, _ in notices(desk, paused)} == {"sla-reminder", "sla-escalation"}


def test_first_response_and_resolution_are_recorded(desk, cli_for):
    issue = open_issue(desk, berlin(2025, 6, 16, 9))
    with desk.sessions() as s, s.begin():
        s.execute(update(Issue).where(Issue.id == issue).values(mailbox="billing"))  # 24x7
    rep_mail(desk, issue, "Hello Pat, we are on it.")
    rep_mail(desk, issue, "#close\nFixed.")
    with desk.sessions() as s:
        row = s.get_one(Issue, issue)
        assert row.first_response_at is not None and row.status == "closed"
        assert row.first_response_seconds is not None and row.first_response_seconds > 3600
        assert row.resolution_seconds is not None and row.resolution_seconds >= row.first_response_seconds
    # Answered: no reminder for a first response, whenever the check runs.
    assert desk.reminders.check(utcnow() + timedelta(days=30)) == {}
    (listed,) = cli_for(desk).json("sla", "list", "--all")
    assert listed["issue"] == issue and listed["first_response_hours"] > 1 and listed["breached"] == []


@pytest.fixture
def cli_for(tmp_path):
    from conftest import Cli

    return lambda app: Cli(tmp_path / "maild.toml")
