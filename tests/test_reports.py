"""Reports over a generated history with known answers, on SQLite and PostgreSQL:
issue types and trend, reps' load, resources, turnaround (medians, p90, targets,
breaches), backlog per day, channels, key statistics, filters, sorting, the CLI
(table, JSON, CSV) and the charts."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, UTC

import pytest
from sqlalchemy import select

from maild import db
from maild.models import Action, CannedUse, Category, Customer, Interaction, Issue, Rep
from maild.reports import REPORTS, Filters, FilterError, ReportError, key_statistics, run_report
from maild.reports.charts import chart_png, chart_svg

MAR4 = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
WEEK = Filters.from_query({"since": "2024-03-04", "until": "2024-03-10"})
LATER = datetime(2024, 4, 1, tzinfo=UTC)
# Billing issue i opens on March 4 + i days at midnight; its first (non-automatic) reply
# comes FIRST_REPLY[i] hours later, it closes CLOSED[i] hours later (None: still open).
FIRST_REPLY = [1, 2, 3, 4, 5, 30]
CLOSED = [None, None, 10, 20, 30, 40]
H = timedelta(hours=1)


@pytest.fixture
def sessions(settings):
    engine = db.make_engine(settings.database.url)
    db.migrate(engine)
    factory = db.session_factory(engine)
    with factory() as session:
        db.sync_config(session, settings)
    with factory() as session, session.begin():
        _history(session)
    yield factory
    engine.dispose()


def _interaction(session, issue, when, direction, **kw) -> Interaction:
    i = Interaction(direction=direction, created_at=when, date=when, mailbox=issue.mailbox, **kw)
    session.add(i)
    session.flush()
    session.add(Action(issue_id=issue.id, interaction_id=i.id, created_at=when))
    return i


def _history(session) -> None:
    cats = {c.name: c.id for c in session.scalars(select(Category))}
    reps = {r.name: r for r in session.scalars(select(Rep))}
    alice, bob = reps["Alice"], reps["Bob"]

    def issue(category, opened, mailbox, **kw) -> Issue:
        customer = Customer(name="c")
        session.add(customer)
        session.flush()
        i = Issue(category_id=cats[category], mailbox=mailbox, opened_at=opened, updated_at=opened,
                  customer_id=customer.id, subject=f"{category} {opened:%d %H}", **kw)
        session.add(i)
        session.flush()
        return i

    canned = {0: ["refund"], 1: ["refund"], 2: ["refund"], 3: ["shipping"]}
    for n, (reply, closed) in enumerate(zip(FIRST_REPLY, CLOSED)):
        opened = MAR4 + timedelta(days=n)
        rep = alice if n % 2 == 0 else bob
        i = issue("billing", opened, "billing", assignee_id=rep.id, status="closed" if closed else "open",
                  closed_at=opened + closed * H if closed else None)
        _interaction(session, i, opened, "inbound", customer_id=i.customer_id)
        _interaction(session, i, opened + timedelta(minutes=1), "outbound", customer_id=i.customer_id,
                     auto="acknowledgement", auto_generated=True)  # automatic: no first response
        mail = _interaction(session, i, opened + reply * H, "outbound", customer_id=i.customer_id, rep_id=rep.id)
        for name in canned.get(n, []):
            session.add(CannedUse(name=name, issue_id=i.id, interaction_id=mail.id, rep_id=rep.id,
                                  used_at=opened + reply * H))
        if n == 0:
            _interaction(session, i, opened + 5 * H, "internal", channel="note", rep_id=alice.id)
    for _ in range(3):  # today's new mail, unanswered for 6 hours at the statistics' "now"
        i = issue("uncategorized", MAR4 + timedelta(days=6, hours=12), "support")
        _interaction(session, i, i.opened_at, "inbound", customer_id=i.customer_id)
    # The previous week: 2 billing, 4 uncategorized issues, all closed before the week began.
    for category, count, day in (("billing", 2, 28), ("uncategorized", 4, 27)):
        for _ in range(count):
            opened = datetime(2024, 2, day, tzinfo=UTC)
            old = issue(category, opened, "support", status="closed", closed_at=datetime(2024, 3, 2, tzinfo=UTC))
            session.add(CannedUse(name="refund", issue_id=old.id, rep_id=alice.id, used_at=opened))


def report(sessions, name, filters=WEEK, **kw):
    with sessions() as session:
        return run_report(session, name, filters, now=LATER, **kw)


def test_issue_types_count_and_trend_against_the_previous_week(sessions):
    r = report(sessions, "issue-types")
    assert r.rows == [("billing", 6, 2, 4, 200.0, 2), ("uncategorized", 3, 4, -1, -25.0, 3)]
    assert r.totals == ("Total", 9, 6, 3, None, 5)
    assert r.window.start == MAR4 and r.window.end == MAR4 + timedelta(days=7)


def test_turnaround_medians_p90_targets_and_breaches_by_category_and_rep(sessions):
    rows = {(r[0], r[1]): r[2:] for r in report(sessions, "turnaround").rows}
    # billing: first replies 1,2,3,4,5,30 h; resolved 10,20,30,40 h; two open a week (past 72 h).
    assert rows[("category", "billing")] == (6, 3.5, 17.5, 83.3, 25.0, 37.0, 66.7, 3)
    # today's three: not answered, not yet past the 24 h target: neither known nor breached.
    assert rows[("category", "uncategorized")] == (3, None, None, None, None, None, None, 0)
    assert rows[("rep", "Alice")] == (3, 3.0, 4.6, 100.0, 20.0, 28.0, 66.7, 1)
    assert rows[("rep", "Bob")] == (3, 4.0, 24.8, 66.7, 30.0, 38.0, 66.7, 2)
    assert rows[("rep", "unassigned")][0] == 3
    assert len(rows) == 5


def test_turnaround_targets_change_shares_and_breaches(sessions):
    from maild.reports import Targets

    rows = {(r[0], r[1]): r[2:] for r in report(sessions, "turnaround", targets=Targets(2.5, 25)).rows}
    # first reply within 2.5 h: 1 and 2 of six; resolved within 25 h: 10 and 20 of four closed + two open.
    assert rows[("category", "billing")][3] == 33.3 and rows[("category", "billing")][6] == 33.3
    assert rows[("category", "billing")][7] == 6  # every billing issue missed one target or the other


def test_reps_load(sessions):
    r = report(sessions, "reps")
    assert r.rows == [("Alice", "alice@acme.test", 4, 3, 1, 2, 1), ("Bob", "bob@acme.test", 3, 3, 0, 2, 1)]
    only = report(sessions, "reps", Filters(since=WEEK.since, until=WEEK.until, rep="bob@acme.test"))
    assert [row[0] for row in only.rows] == ["Bob"]


def test_resources_count_canned_responses_in_the_period(sessions):
    r = report(sessions, "resources")
    assert r.rows == [("refund", "canned", 3, 3, 2), ("shipping", "canned", 1, 1, 1)]
    alice = report(sessions, "resources", WEEK.with_(rep="Alice"))
    assert alice.rows == [("refund", "canned", 2, 2, 1)]


def test_backlog_per_day(sessions):
    r = report(sessions, "backlog")
    assert r.rows == [
        ("2024-03-04", 1, 0, 1), ("2024-03-05", 1, 0, 2), ("2024-03-06", 1, 1, 2), ("2024-03-07", 1, 1, 2),
        ("2024-03-08", 1, 0, 3), ("2024-03-09", 1, 1, 3), ("2024-03-10", 3, 1, 5),
    ]
    # The week before: six opened, all closed on March 2; nothing open at its start.
    before = report(sessions, "backlog", Filters.from_query({"since": "2024-02-26", "until": "2024-03-03"}))
    assert [row[3] for row in before.rows] == [0, 4, 6, 6, 6, 0, 0]


def test_channels_by_direction(sessions):
    r = report(sessions, "channels")
    assert r.rows == [("email", "outbound", 12, 6, 6), ("email", "inbound", 9, 0, 9), ("note", "internal", 1, 0, 0)]
    notes = report(sessions, "channels", WEEK.with_(channel="note"))
    assert notes.rows == [("note", "internal", 1, 0, 0)]


def test_filters_narrow_by_mailbox_category_priority(sessions):
    # The support mailbox: this week's three, and the previous week's six (two of them billing).
    assert report(sessions, "issue-types", WEEK.with_(mailbox="support")).rows == [
        ("uncategorized", 3, 4, -1, -25.0, 3), ("billing", 0, 2, -2, -100.0, 0)]
    billing = report(sessions, "turnaround", WEEK.with_(category="billing")).rows
    assert {(r[0], r[1]) for r in billing} == {("category", "billing"), ("rep", "Alice"), ("rep", "Bob")}
    assert report(sessions, "issue-types", WEEK.with_(priority="high")).rows == []
    # Interactions on billing issues only: 6 inbound, 12 outbound, the note.
    assert sum(r[2] for r in report(sessions, "channels", WEEK.with_(category="billing")).rows) == 19


def test_sort_by_any_column_and_errors(sessions):
    assert [r[0] for r in report(sessions, "issue-types", sort="previous").rows] == ["billing", "uncategorized"]
    assert [r[0] for r in report(sessions, "issue-types", sort="previous", desc=True).rows] == [
        "uncategorized", "billing"]
    with pytest.raises(ReportError, match="no column 'nope'"):
        report(sessions, "issue-types", sort="nope")
    with pytest.raises(ReportError, match="no report named 'types'"):
        report(sessions, "types")
    with pytest.raises(FilterError, match="since: 'yesterday' is not a date"):
        Filters.from_query({"since": "yesterday"})
    with pytest.raises(FilterError, match="must be before"):
        Filters.from_query({"since": "2024-03-10", "until": "2024-03-01"})
    with pytest.raises(FilterError, match="outside the calendar"):  # a date at the end of time: no 500
        Filters.from_query({"until": "9999-12-31"}).window(datetime.now(UTC))


def test_filters_round_trip_through_a_query_string():
    f = Filters.from_query({"since": "2024-03-04", "until": "2024-03-10T12:00:00Z", "rep": "Alice",
                            "channel": "", "unknown": "x"})
    assert f.as_query() == {"since": "2024-03-04", "until": "2024-03-10T12:00:00+00:00", "rep": "Alice"}
    assert Filters.from_query(f.as_query()) == f


def test_key_statistics(sessions):
    with sessions() as session:
        stats = key_statistics(session, MAR4 + timedelta(days=6, hours=18))
    waiting = stats.pop("oldest_waiting")
    assert waiting["subject"] == "uncategorized 10 12" and waiting["age_seconds"] == 6 * 3600
    assert stats == {
        "open": 5, "pending": 0, "unassigned": 3, "opened_today": 3, "opened_this_week": 9, "closed_today": 1,
        "closed_this_week": 4, "breaches": 0, "interactions_today": 4, "quarantined": 0, "outbox_failures": 0,
    }
    with sessions() as session:  # two days on, today's three are unanswered past 24 h
        assert key_statistics(session, MAR4 + timedelta(days=8, hours=18))["breaches"] == 3


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_every_report_charts_as_png_and_svg(sessions, name):
    r = report(sessions, name)
    png = chart_png(r)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    svg = chart_svg(r)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and REPORTS[name].title.split()[0] in svg


def test_cli_report_table_json_csv_and_statistics(sessions, cli):
    week = ["--since", "2024-03-04", "--until", "2024-03-10"]
    data = cli.json("report", "issue-types", *week, "--sort", "category")
    assert data["rows"][0] == {"category": "billing", "issues": 6, "previous": 2, "change": 4,
                               "change_pct": 200.0, "open": 2}
    assert data["totals"]["issues"] == 9 and data["filters"] == {"since": "2024-03-04", "until": "2024-03-10"}
    result = cli("report", "reps", *week, "--csv", "--sort", "replies")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.output)))
    assert rows[0] == ["rep", "email", "interactions", "replies", "notes", "issues_closed", "issues_assigned"]
    assert rows[1:] == [["Alice", "alice@acme.test", "4", "3", "1", "2", "1"],
                        ["Bob", "bob@acme.test", "3", "3", "0", "2", "1"]]
    table = cli("report", "turnaround", *week, "--category", "billing")
    assert table.exit_code == 0 and "Turnaround" in table.output and "17.50" in table.output
    assert "83.3%" in table.output
    stats = cli("report")
    assert stats.exit_code == 0 and "Open issues:" in stats.output
    assert json.loads(cli("report", "--json").output)["unassigned"] == 3
    bad = cli("report", "issue-types", "--sort", "nope")
    assert bad.exit_code == 65 and "no column 'nope'" in bad.output
    bad = cli("report", "nope")
    assert bad.exit_code == 65 and "issue-types, reps, resources" in bad.output
